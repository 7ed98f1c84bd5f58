"""Every bad-input case of the import: a clear error naming the file/row and the fix, a non-zero
exit from the real CLI entry point, and the store left byte-for-byte as it was."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_benchmark, png_bytes, run_cli
from PIL import Image

from mitoprobe.store import Store

PNG_FIX = "replace it with a 128x128 8-bit RGB PNG or remove it"




def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def stored(tmp_path):
    """A store holding a good import, and a fresh copy of the benchmark to break."""
    good = make_benchmark(tmp_path / "good")
    store_dir = tmp_path / "store"
    Store(store_dir).import_dataset(good, good / "AMI-BR.csv")
    bench = make_benchmark(tmp_path / "bad", seed=1)
    return store_dir, bench, snapshot(store_dir)


def import_refused(monkeypatch, capsys, stored, *expected: str, path: Path | None = None) -> str:
    """Import via the CLI; assert exit 2, each ``expected`` text in the message, store unchanged."""
    store_dir, bench, before = stored
    code, out = run_cli(monkeypatch, capsys, "data", "import", str(path or bench), "--store", str(store_dir))
    assert code == 2, out
    assert "error:" in out and "store is unchanged" in out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert snapshot(store_dir) == before
    return out


def one_png(bench: Path, ds: str = "AtNorM-Br", label: str = "Normal") -> Path:
    return sorted((bench / ds / label).glob("*.png"))[0]


# -- folders ----------------------------------------------------------------------------------
def test_missing_folder(monkeypatch, capsys, stored, tmp_path):
    out = import_refused(monkeypatch, capsys, stored, "no-such-dir", "dataset folder not found", "MITOPROBE_DATA",
                         path=tmp_path / "no-such-dir")
    assert "store is unchanged" in out


def test_missing_dataset_folder(monkeypatch, capsys, stored):
    import shutil

    shutil.rmtree(stored[1] / "AtNorM-Br")
    import_refused(monkeypatch, capsys, stored, "AtNorM-Br: folder missing", "AtNorM-Br/Atypical")


def test_empty_folder(monkeypatch, capsys, stored, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    import_refused(monkeypatch, capsys, stored, f"{empty / 'AMi-Br'}: folder missing", "amibr_train_split.csv: missing",
                   path=empty)


def test_empty_label_folder(monkeypatch, capsys, stored):
    for p in (stored[1] / "AtNorM-Br" / "Normal").glob("*.png"):
        p.unlink()
    import_refused(monkeypatch, capsys, stored, "AtNorM-Br/Normal: folder is empty", "expected the Normal PNG patches")


# -- images -----------------------------------------------------------------------------------
def test_truncated_png(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(p.read_bytes()[:300])
    import_refused(monkeypatch, capsys, stored, str(p), "truncated or corrupt PNG", PNG_FIX)


def test_not_an_image(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_text("slide,label\nthis is a csv, not a png\n")
    import_refused(monkeypatch, capsys, stored, str(p), "not an image file", PNG_FIX)


def test_jpeg_named_png(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    buf = io.BytesIO()
    Image.new("RGB", (128, 128), (200, 100, 150)).save(buf, format="JPEG")
    p.write_bytes(buf.getvalue())
    import_refused(monkeypatch, capsys, stored, str(p), "is a JPEG image, not a PNG", PNG_FIX)


def test_zero_bytes(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(b"")
    import_refused(monkeypatch, capsys, stored, str(p), "empty file (0 bytes)", PNG_FIX)


def test_rgba_with_transparency_refused(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    rgba = np.full((128, 128, 4), 255, dtype=np.uint8)
    rgba[0, 0, 3] = 10
    p.write_bytes(png_bytes(rgba))
    import_refused(monkeypatch, capsys, stored, str(p), "RGBA with transparent pixels", PNG_FIX)


def test_opaque_rgba_converted_and_reported(monkeypatch, capsys, stored):
    store_dir, bench, _ = stored
    p = one_png(bench)
    rgb = np.asarray(Image.open(p).convert("RGB"))
    p.write_bytes(png_bytes(np.dstack([rgb, np.full((128, 128), 255, np.uint8)])))
    code, out = run_cli(monkeypatch, capsys, "data", "import", str(bench), "--store", str(store_dir), "--replace")
    assert code == 0, out
    assert f"{p}: RGBA with fully opaque alpha, converted to RGB" in out.replace("\n", "")
    row = Store(store_dir).patches().set_index("relpath").loc[f"AtNorM-Br/Normal/{p.name}"]
    with Image.open(io.BytesIO(Store(store_dir).images([row["patch_id"]])[row["patch_id"]])) as img:
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), rgb)


def test_grayscale(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(png_bytes(np.zeros((128, 128), np.uint8)))
    import_refused(monkeypatch, capsys, stored, str(p), "grayscale image (mode L)", PNG_FIX)


def test_16bit_grayscale(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(png_bytes(np.full((128, 128), 40000, np.uint16)))
    import_refused(monkeypatch, capsys, stored, str(p), "16-bit", PNG_FIX)


def _png_rgb16(h: int = 128, w: int = 128) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow opens these as 8-bit RGB, silently)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + np.full((w, 3), 30000, ">u2").tobytes() for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16bit_rgb(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(_png_rgb16())
    import_refused(monkeypatch, capsys, stored, str(p), "16-bit per channel PNG", PNG_FIX)


def test_not_128(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(png_bytes(np.zeros((64, 96, 3), np.uint8)))
    import_refused(monkeypatch, capsys, stored, str(p), "is 96x64 pixels, expected 128x128", PNG_FIX)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w x h`` 8-bit RGB, with a token IDAT: refused from the header, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_refused_from_its_header(monkeypatch, capsys, stored):
    p = one_png(stored[1])
    p.write_bytes(_png_header_only(20000, 20000))
    import_refused(monkeypatch, capsys, stored, str(p), "is 20000x20000 pixels", "above the limit", PNG_FIX)


# -- CSVs -------------------------------------------------------------------------------------
def test_header_only_split_csv(monkeypatch, capsys, stored):
    csv = stored[1] / "amibr_train_split.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    import_refused(monkeypatch, capsys, stored, f"{csv}: has a header but no data rows",
                   "every AMi-Br patch would silently become test", "restore the published file")


def test_csv_missing_columns(monkeypatch, capsys, stored):
    csv = stored[1] / "AtNorM-MD_expert_votes.csv"
    pd.read_csv(csv).drop(columns=["Expert_4", "Majority"]).to_csv(csv, index=False)
    import_refused(monkeypatch, capsys, stored, str(csv), "missing column(s) ['Expert_4', 'Majority']",
                   "restore the published header")


def test_csv_unknown_label(monkeypatch, capsys, stored):
    csv = stored[1] / "amibr_train_split.csv"
    df = pd.read_csv(csv, index_col=0)
    df.loc[df.index[2], "final_label"] = "Mitosis"
    df.to_csv(csv)
    import_refused(monkeypatch, capsys, stored, f"{csv} row 4: unknown label 'Mitosis'",
                   "use one of ['Atypical', 'Normal']")


def test_md_csv_unknown_vote(monkeypatch, capsys, stored):
    csv = stored[1] / "AtNorM-MD_expert_votes.csv"
    df = pd.read_csv(csv)
    df.loc[5, "Expert_3"] = "maybe"
    df.to_csv(csv, index=False)
    import_refused(monkeypatch, capsys, stored, f"{csv} row 7: unknown label 'maybe'")


def test_file_listed_but_absent(monkeypatch, capsys, stored):
    bench = stored[1]
    (bench / "AMi-Br" / "Normal" / "MIDOG21_100.png").unlink()  # in the train CSV and AMI-BR.csv
    (bench / "AtNorM-MD" / "Atypical" / "3.png").unlink()
    out = import_refused(monkeypatch, capsys, stored, "MIDOG21_100.png is listed but absent",
                         "3.png is listed but absent", "restore the file or delete the row")
    assert f"{bench / 'amibr_train_split.csv'} row " in out
    md = pd.read_csv(bench / "AtNorM-MD_expert_votes.csv")
    row = int(md.index[md.Filename == "3.png"][0]) + 2
    assert f"{bench / 'AtNorM-MD_expert_votes.csv'} row {row}: 3.png is listed but absent" in out


def test_file_present_but_not_listed(monkeypatch, capsys, stored):
    bench = stored[1]
    extra_md = bench / "AtNorM-MD" / "Normal" / "999.png"
    extra_amibr = bench / "AMi-Br" / "Atypical" / "MIDOG21_999.png"
    for p in (extra_md, extra_amibr):
        p.write_bytes(png_bytes(np.zeros((128, 128, 3), np.uint8)))
    import_refused(monkeypatch, capsys, stored, f"{extra_md}: present but not listed",
                   f"{extra_amibr}: present but not listed", "add its row or remove the file")


def test_duplicate_csv_row(monkeypatch, capsys, stored):
    csv = stored[1] / "AtNorM-MD_expert_votes.csv"
    df = pd.read_csv(csv)
    pd.concat([df, df.iloc[[0]]]).to_csv(csv, index=False)
    import_refused(monkeypatch, capsys, stored, f"{csv} row {len(df) + 2}: {df.Filename[0]} listed twice",
                   "delete one row")


def test_same_patch_in_both_label_folders(monkeypatch, capsys, stored):
    bench = stored[1]
    src = one_png(bench, "AtNorM-Br", "Normal")
    dup = bench / "AtNorM-Br" / "Atypical" / src.name
    dup.write_bytes(src.read_bytes())
    import_refused(monkeypatch, capsys, stored, src.name, "two different labels", "keep one")


def test_csv_label_differs_from_folder(monkeypatch, capsys, stored):
    csv = stored[1] / "amibr_train_split.csv"
    df = pd.read_csv(csv, index_col=0)
    i = df.index[df.final_label == "Normal"][0]
    df.loc[i, "final_label"] = "Atypical"
    df.to_csv(csv)
    import_refused(monkeypatch, capsys, stored, f"{csv} row {i + 2}: {df.dataset_uid[i]} is labelled Atypical",
                   "two different labels", "fix the CSV or move the file")


def test_md_majority_differs_from_folder(monkeypatch, capsys, stored):
    csv = stored[1] / "AtNorM-MD_expert_votes.csv"
    df = pd.read_csv(csv)
    df.loc[0, "Majority"] = "Normal" if df.loc[0, "Majority"] == "Atypical" else "Atypical"
    df.to_csv(csv, index=False)
    import_refused(monkeypatch, capsys, stored, f"{csv} row 2:", "contradicts its folder", "two different labels")


def test_every_problem_reported_at_once(monkeypatch, capsys, stored):
    bench = stored[1]
    one_png(bench, "AtNorM-Br", "Normal").write_bytes(b"")
    one_png(bench, "AtNorM-MD", "Normal").write_bytes(png_bytes(np.zeros((128, 128), np.uint8)))
    out = import_refused(monkeypatch, capsys, stored, "2 problem(s)", "empty file", "grayscale")
    assert out.count("\n  - ") == 2


def test_real_process_exit_code(stored, tmp_path):
    """The installed entry point, in its own process: one red line on stderr, exit 2."""
    store_dir, bench, before = stored
    one_png(bench).write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "mitoprobe", "data", "import", str(bench), "--store", str(store_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "\nerror: 1 problem(s) in the input" in proc.stderr and "empty file (0 bytes)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(store_dir) == before
