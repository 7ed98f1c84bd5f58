"""Bring your own cohort: manifest and folder imports beside the benchmark (store.cohort)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import run_cli, patch_files
from mitoprobe.store import Store
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.errors import DataError, StoreError


def image_bytes(size=(100, 80), fmt="PNG", mode="RGB", frames=1) -> bytes:
    rng = np.random.default_rng(size[0] * 7 + size[1])
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    if frames > 1:
        img.save(buf, format=fmt, save_all=True, append_images=[img] * (frames - 1))
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def cohort(tmp_path):
    return write_example_cohort(tmp_path / "cohort")


def test_manifest_import_keeps_sizes_labels_and_metadata(tiny_store, cohort):
    out = tiny_store.import_cohort("MyLab", manifest=cohort)
    assert out.changed
    p = tiny_store.patches()
    mine = p[p["dataset"] == "MyLab"].set_index("relpath")
    assert len(mine) == 20 and set(p["dataset"]) == {"AMi-Br", "AtNorM-Br", "AtNorM-MD", "MyLab"}
    assert (mine.loc["images/patch_000.jpg", ["width", "height"]].tolist()) == [160, 160]
    assert (mine.loc["images/patch_016.png", ["width", "height"]].tolist()) == [200, 150]
    assert mine["label"].isna().sum() == 4 and mine["y"].isna().sum() == 4
    assert mine.loc["images/patch_010.png", "label"] == "Atypical"  # "AMF"
    assert mine.loc["images/patch_011.png", "label"] == "Normal"  # "NMF"
    assert json.loads(mine.loc["images/patch_001.jpg", "metadata"]) == {"scanner": "ScannerX"}
    assert mine.loc["images/patch_003.jpg", ["slide", "coord_x", "coord_y"]].tolist() == ["slide-3", 130, 215]
    # every stored patch is a PNG, whatever came in (JPEG stored as the PNG of its decoded pixels)
    imgs = tiny_store.images(list(mine["patch_id"]))
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs.values())
    counts = out.counts.set_index("dataset")
    assert counts.loc["MyLab", ["patches", "atypical", "normal", "unlabelled"]].tolist() == [20, 8, 8, 4]


def test_reimport_is_idempotent_incremental_and_benchmark_reimport_keeps_the_cohort(tiny_store, tiny_benchmark,
                                                                                    cohort):
    tiny_store.import_cohort("MyLab", manifest=cohort)
    before = patch_files(tiny_store)
    assert not tiny_store.import_cohort("MyLab", manifest=cohort).changed
    assert patch_files(tiny_store) == before
    # the benchmark re-import leaves the cohort alone
    assert not tiny_store.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv").changed
    # one added row: added, the others reused (not decoded again: a corrupt stored copy would show)
    (cohort.parent / "images/extra.png").write_bytes(image_bytes((64, 64)))
    m = pd.read_csv(cohort)
    m.loc[len(m)] = dict(path="images/extra.png", label="normal", slide="s9", split="train", x=1, y=2,
                         scanner="Z")
    m.to_csv(cohort, index=False)
    out = tiny_store.import_cohort("MyLab", manifest=cohort)
    assert out.changed
    p = tiny_store.patches()
    mine = p[p["dataset"] == "MyLab"]
    assert len(mine) == 21
    extra = mine[mine["relpath"] == "images/extra.png"].iloc[0]
    assert extra["split"] == "train" and extra["train_row"] == 20
    # the benchmark rows come first, untouched
    assert list(dict.fromkeys(p["dataset"])) == ["AMi-Br", "AtNorM-Br", "AtNorM-MD", "MyLab"]


def test_dropping_or_relabelling_a_stored_cohort_patch_needs_replace(tiny_store, cohort):
    tiny_store.import_cohort("MyLab", manifest=cohort)
    before = patch_files(tiny_store)
    m = pd.read_csv(cohort, keep_default_na=False)
    m.loc[0, "label"] = "normal"
    m.iloc[:-1].to_csv(cohort, index=False)
    with pytest.raises(StoreError, match=r"drop 1 and change 1 of the 20 stored patches of \['MyLab'\]"):
        tiny_store.import_cohort("MyLab", manifest=cohort)
    assert patch_files(tiny_store) == before
    tiny_store.import_cohort("MyLab", manifest=cohort, replace=True)
    p = tiny_store.patches()
    assert (p["dataset"] == "MyLab").sum() == 19 and (p["dataset"] == "AMi-Br").sum() == 12


def test_folder_layouts_labelled_and_flat(tmp_path):
    root = tmp_path / "lab"
    for label in ("Atypical", "normal"):
        (root / label).mkdir(parents=True)
        (root / label / "a.tif").write_bytes(image_bytes((90, 90), "TIFF"))
        (root / label / "b.jpeg").write_bytes(image_bytes((130, 120), "JPEG"))
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "u1.png").write_bytes(image_bytes((128, 128)))
    st = Store(tmp_path / "store")
    st.import_cohort("LabA", folder=root, split="train")
    st.import_cohort("LabB", folder=flat)
    p = st.patches().set_index("relpath")
    assert p.loc["Atypical/a.tif", "label"] == "Atypical" and p.loc["normal/b.jpeg", "label"] == "Normal"
    assert set(p.loc[p["dataset"] == "LabA", "split"]) == {"train"}
    assert p.loc["u1.png", "label"] is None or pd.isna(p.loc["u1.png", "label"])
    assert p.loc["u1.png", "split"] == "test"


BAD_MANIFESTS = [
    ("file,label\nimages/a.png,1\n", "missing column 'path'"),
    ("path,label\n../outside.png,1\n", "row 2: path '../outside.png' lies outside the manifest's folder"),
    ("path,label\n/etc/passwd,1\n", "row 2: path '/etc/passwd' lies outside"),
    ("path,label\nimages/a.png,1\nimages/a.png,0\n", "row 3: path 'images/a.png' is listed twice (first at row 2)"),
    ("path,label\nimages/a.png,maybe\n", "row 2: unknown label 'maybe'"),
    ("path,label\nimages/notimage.png,1\n", "row 2: "),
    ("path,label\nimages/gray.jpg,1\n", "grayscale image"),
    ("path,label\nimages/pages.tif,1\n", "holds 2 images"),
    ("path,label,split\nimages/a.png,1,validation\n", "row 2: split 'validation'"),
    ("path,label,x,y\nimages/a.png,1,1.5,3\n", "row 2: x/y"),
    ("path,label\nimages/none.png,1\n", "row 2: "),
    ("path;label\n\"images/a.png;1\n", "cannot be read as CSV"),  # ';'-separated, a quote never closed
]


@pytest.mark.parametrize("text,message", BAD_MANIFESTS, ids=[m for _, m in BAD_MANIFESTS])
def test_bad_manifest_is_refused_naming_the_row_and_the_store_is_unchanged(tiny_store, tmp_path, text, message,
                                                                           monkeypatch, capsys):
    d = tmp_path / "bad"
    (d / "images").mkdir(parents=True)
    (d / "images/a.png").write_bytes(image_bytes())
    (d / "images/notimage.png").write_bytes(b"not an image at all")
    (d / "images/gray.jpg").write_bytes(image_bytes(fmt="JPEG", mode="L"))
    (d / "images/pages.tif").write_bytes(image_bytes(fmt="TIFF", frames=2))
    (d / "manifest.csv").write_text(text)
    before = patch_files(tiny_store)
    code, out = run_cli(monkeypatch, capsys, "data", "import", "--manifest", str(d / "manifest.csv"),
                        "--dataset", "Bad", "--store", str(tiny_store.root))
    assert code == 2, out
    assert message in out.replace("\n", " ")
    assert "Traceback" not in out
    assert patch_files(tiny_store) == before


def test_every_problem_is_listed_at_once(tmp_path):
    d = tmp_path / "bad"
    (d / "images").mkdir(parents=True)
    (d / "images/notimage.png").write_bytes(b"junk")
    (d / "m.csv").write_text("path,label\nimages/notimage.png,1\nimages/x.png,weird\n")
    with pytest.raises(DataError) as e:
        Store(tmp_path / "s").import_cohort("Lab", manifest=d / "m.csv")
    assert "3 problem(s)" in str(e.value) and "row 2" in str(e.value) and "row 3" in str(e.value)
    assert not (tmp_path / "s" / "patches.parquet").exists()


@pytest.mark.parametrize("sep, encoding, note", [
    (";", "cp1252", "read as ';'-separated, Windows-1252"),
    (";", "utf-8-sig", "read as ';'-separated ("),
    ("\t", "utf-16", "read as tab-separated, UTF-16"),  # a spreadsheet's "Unicode text"
    (",", "cp1252", "read as Windows-1252 ("),
])
def test_a_spreadsheets_manifest_is_read_with_a_note(tiny_store, cohort, monkeypatch, capsys, sep, encoding, note):
    """A spreadsheet saves ';'-separated (decimal-comma locales), tab-separated or Windows-1252 text:
    imported as the comma-separated UTF-8 manifest would be, with a note saying what was assumed."""
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    df.loc[1, "scanner"] = "Zürich Scanner é"
    df.loc[3, "slide"] = "lame-3 (coupe n°2)"
    df.to_csv(cohort, sep=sep, encoding=encoding, index=False)
    code, out = run_cli(monkeypatch, capsys, "data", "import", "--manifest", str(cohort), "--dataset", "MyLab",
                        "--store", str(tiny_store.root))
    assert code == 0, out
    assert f"{cohort}: {note}" in out.replace("\n", " "), out
    mine = tiny_store.patches().query("dataset == 'MyLab'").set_index("relpath")
    assert len(mine) == 20 and mine["label"].isna().sum() == 4
    assert json.loads(mine.loc["images/patch_001.jpg", "metadata"]) == {"scanner": "Zürich Scanner é"}
    assert mine.loc["images/patch_003.jpg", ["slide", "coord_x", "coord_y"]].tolist() == ["lame-3 (coupe n°2)", 130,
                                                                                          215]


def test_plain_manifest_has_no_note_and_a_workbook_is_refused(tmp_path, cohort):
    out = Store(tmp_path / "s").import_cohort("MyLab", manifest=cohort)
    assert not any("read as" in n for n in out.notes)
    book = cohort.with_suffix(".xlsx")
    book.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + bytes(range(256)))
    with pytest.raises(DataError, match=r"manifest\.xlsx: is not a text file.*save it as CSV"):
        Store(tmp_path / "s").import_cohort("MyLab", manifest=book)


@pytest.mark.parametrize("name", ["AMi-Br", "AtNorM-MD", "AMi-Br-test", "bad name", "", "../x"])
def test_dataset_names_that_clash_or_are_not_identifiers_are_refused(tmp_path, cohort, name):
    with pytest.raises(DataError, match="dataset name"):
        Store(tmp_path / "s").import_cohort(name, manifest=cohort)


def test_a_cohort_copy_of_a_stored_patch_is_flagged(tiny_store, tiny_benchmark, tmp_path):
    d = tmp_path / "leak"
    d.mkdir()
    src = next((tiny_benchmark / "AMi-Br" / "Normal").iterdir())
    shutil.copy(src, d / "copy.png")
    out = tiny_store.import_cohort("Leak", folder=d)
    assert any("byte-identical to stored patches (1 in AMi-Br)" in n for n in out.notes)


def test_cli_import_of_the_example_cohort(tmp_path, monkeypatch, capsys, tiny_store):
    code, out = run_cli(monkeypatch, capsys, "data", "example-cohort", str(tmp_path / "ex"))
    assert code == 0, out
    code, out = run_cli(monkeypatch, capsys, "data", "import", "--manifest", str(tmp_path / "ex/manifest.csv"),
                        "--dataset", "MyLab", "--store", str(tiny_store.root))
    assert code == 0, out
    assert "4 unlabelled" in out and "MyLab" in out
    code, out = run_cli(monkeypatch, capsys, "data", "import", "--manifest", str(tmp_path / "ex/manifest.csv"),
                        "--store", str(tiny_store.root))
    assert code == 2 and "--manifest needs --dataset" in out
