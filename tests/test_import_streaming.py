"""An import's metadata is spooled to a file a batch at a time (store/scanned.py): the same table and notes
whatever the batch size, duplicates found across batches, and a scan's Python memory flat in its patches."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_benchmark, patch_files
from mitoprobe.store import Store, scanned
from mitoprobe.store import cohort as cohort_mod
from mitoprobe.store.cohort import scan_cohort
from mitoprobe.store.dataset import patch_difference, summarize_counts
from mitoprobe.store.errors import DataError, StoreError


def _png(seed: int, size: int = 8) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_cohort(root, n: int, dup_pairs=((0, -1),), extra_rows: str = ""):
    """A manifest of ``n`` tiny patches; in each of ``dup_pairs`` the second patch is a byte copy of the first
    (far apart: different batches when the batch is small). Every 5th row is unlabelled."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    copies = {b % n: a % n for a, b in dup_pairs}
    lines = ["path,label,slide,split,scanner"]
    for i in range(n):
        (root / "images" / f"p{i:05d}.png").write_bytes(_png(copies.get(i, i)))
        label = "" if i % 5 == 4 else ("atypical" if i % 2 else "normal")
        lines.append(f"images/p{i:05d}.png,{label},s{i % 3},{'train' if i % 4 else 'test'},{'X' if i % 7 else ''}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n" + extra_rows)
    return root / "manifest.csv"


def table_of(st: Store) -> pa.Table:
    """The whole patches table, pixels included, in the table's order."""
    return pa.concat_tables(pq.read_table(p) for p in st.patch_parts.part_paths())


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 3 spooled rows (reads of the spool and of the staged part in step with it too) and
    manifest chunks of 2 rows."""
    monkeypatch.setattr(scanned, "BATCH", 3)
    monkeypatch.setattr(cohort_mod, "MANIFEST_CHUNK_ROWS", 2)


def test_small_batches_store_the_same_table_and_notes_and_find_duplicates_across_batches(tmp_path, monkeypatch):
    manifest = write_cohort(tmp_path / "c", 23, dup_pairs=((0, 22), (3, 11)))
    one = Store(tmp_path / "one").import_cohort("Lab", manifest=manifest)
    monkeypatch.setattr(scanned, "BATCH", 3)
    monkeypatch.setattr(cohort_mod, "MANIFEST_CHUNK_ROWS", 2)
    many = Store(tmp_path / "many").import_cohort("Lab", manifest=manifest)
    a, b = table_of(Store(tmp_path / "one")), table_of(Store(tmp_path / "many"))
    assert a.equals(b) and a.num_rows == 23
    assert one.notes == many.notes
    assert "4 of the Lab patches share their pixels with another of them; kept, flagged in column duplicate_group" \
        in many.notes
    assert "Lab: patch sizes 8x8 (23); each recipe resizes them its own way, and `handcrafted` assumes a mitosis " \
           "centred at AMi-Br's scale (docs/cohorts.md)" in many.notes
    assert "Lab: 4 unlabelled patch(es): predicted and searched, never scored" in many.notes
    groups = {r["relpath"]: r["duplicate_group"] for r in b.select(["relpath", "duplicate_group"]).to_pylist()}
    flagged = {k for k, v in groups.items() if v is not None}
    assert flagged == {"images/p00000.png", "images/p00022.png", "images/p00003.png", "images/p00011.png"}
    assert groups["images/p00000.png"] == groups["images/p00022.png"] != groups["images/p00003.png"]
    want = summarize_counts(Store(tmp_path / "many").patches()).to_dict("records")
    assert many.counts.to_dict("records") == one.counts.to_dict("records") == want
    assert [r["split"] for r in want] == ["test", "train"] and want[0]["unlabelled"] == 1


def test_small_batches_keep_the_benchmark_import_and_its_duplicate_note(tmp_path, monkeypatch):
    bench = make_benchmark(tmp_path / "b")
    pngs = sorted((bench / "AMi-Br").rglob("*.png"))
    atypical = next(p for p in pngs if p.parent.name == "Atypical")
    normal = next(p for p in reversed(pngs) if p.parent.name == "Normal")
    normal.write_bytes(atypical.read_bytes())  # one pixel-identical pair, two labels
    one = Store(tmp_path / "one").import_dataset(bench, bench / "AMI-BR.csv")
    monkeypatch.setattr(scanned, "BATCH", 3)
    many = Store(tmp_path / "many").import_dataset(bench, bench / "AMI-BR.csv")
    assert table_of(Store(tmp_path / "one")).equals(table_of(Store(tmp_path / "many")))
    assert one.notes == many.notes and many.counts.to_dict("records") == one.counts.to_dict("records")
    assert ("2 patches share their pixels with another patch (1 groups, 1 with conflicting labels; all in "
            "['AMi-Br']); kept as published, flagged in column duplicate_group") in many.notes


def test_a_grown_cohort_stages_only_its_added_files_and_replace_still_works(tmp_path, small_batches, monkeypatch):
    root = tmp_path / "c"
    write_cohort(root, 14, dup_pairs=())
    text = (root / "manifest.csv").read_text().splitlines()
    (root / "small.csv").write_text("\n".join(text[:9]) + "\n")
    st = Store(tmp_path / "store")
    st.import_cohort("Lab", manifest=root / "small.csv")
    staged = []
    real = cohort_mod.check_image
    monkeypatch.setattr(cohort_mod, "check_image", lambda raw, *a, **k: staged.append(1) or real(raw, *a, **k))
    out = st.import_cohort("Lab", manifest=root / "manifest.csv")
    assert out.changed and len(staged) == 6 and out.written.files and len(st.patch_parts.entries()) == 2
    assert sorted(st.patches()["relpath"]) == [f"images/p{i:05d}.png" for i in range(14)]
    # a copy of a stored patch added now changes that patch's duplicate_group: a change, refused without --replace
    (root / "images" / "p00099.png").write_bytes((root / "images" / "p00002.png").read_bytes())
    (root / "grown.csv").write_text((root / "manifest.csv").read_text() + "images/p00099.png,normal,s0,test,\n")
    before = patch_files(st)
    with pytest.raises(StoreError, match=r"would drop 0 and change 1 of the 14 stored patches"):
        st.import_cohort("Lab", manifest=root / "grown.csv")
    assert patch_files(st) == before
    out = st.import_cohort("Lab", manifest=root / "grown.csv", replace=True)
    p = st.patches().set_index("relpath")
    assert out.changed and len(p) == 15
    assert p.loc["images/p00099.png", "duplicate_group"] == p.loc["images/p00002.png", "duplicate_group"] is not None
    # --replace dropping rows
    out = st.import_cohort("Lab", manifest=root / "small.csv", replace=True)
    assert sorted(st.patches()["relpath"]) == [f"images/p{i:05d}.png" for i in range(8)]


def test_a_bad_row_after_many_batches_leaves_the_store_and_no_spool_behind(tiny_store, tmp_path, small_batches,
                                                                           monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(scanned.tempfile, "tempdir", str(spool))
    manifest = write_cohort(tmp_path / "c", 12, extra_rows="images/missing.png,normal,s0,test,\n")
    before = patch_files(tiny_store)
    with pytest.raises(DataError, match=r"manifest.csv row 14: .*missing.png not found"):
        tiny_store.import_cohort("Lab", manifest=manifest)
    assert patch_files(tiny_store) == before and not list(spool.iterdir())
    tiny_store.import_cohort("Lab", manifest=write_cohort(tmp_path / "ok", 5))
    assert not list(spool.iterdir())  # a committed import removes its spool too


def test_appending_a_cohort_flags_copies_of_stored_patches(tiny_store, tiny_benchmark, tmp_path, small_batches):
    stored = tiny_store.patches(columns=["relpath", "dataset"])
    src = next(r for r in stored.itertuples() if r.dataset == "AtNorM-Br")
    root = tmp_path / "c"
    write_cohort(root, 7, dup_pairs=())
    (root / "images" / "p00005.png").write_bytes((tiny_benchmark / src.relpath).read_bytes())
    out = tiny_store.import_cohort("Lab", manifest=root / "manifest.csv")
    note = next(n for n in out.notes if "byte-identical" in n)
    assert note.startswith(f"1 Lab patch(es) are byte-identical to stored patches (1 in AtNorM-Br); e.g. "
                           f"images/p00005.png is AtNorM-Br {src.relpath}. ")


def test_patch_difference_counts_and_names_the_columns_that_change():
    old = pa.table({"patch_id": ["a", "b", "c"], "label": ["x", None, "y"], "y": [1, None, 0],
                    "metadata": pa.nulls(3, pa.large_string())})
    new = pa.table({"patch_id": ["b", "c", "d"], "label": ["x", "y", "z"], "y": [None, 0, 1],
                    "metadata": ["{}", None, None]})
    d = patch_difference(old, new)
    assert (d.only_new, d.only_old, d.changed, d.columns) == (1, 1, 1, ("label",))  # metadata: added, all null
    assert patch_difference(old, old).changed == 0


def _scan_peak(tmp_path, n: int) -> int:
    manifest = write_cohort(tmp_path / f"c{n}", n, dup_pairs=())
    tracemalloc.start()
    try:
        scan = scan_cohort("Lab", manifest=manifest)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scan.rows.num_rows == n
    scan.rows.discard()
    return peak


def test_a_scans_python_memory_does_not_grow_with_its_rows(tmp_path, monkeypatch):
    """The scan holds a batch of rows, not every row (a list of dicts and a frame: ~2.4 kB a row, measured);
    what stays per row is the listed paths (a path listed twice is a problem): ~35 bytes a row, measured."""
    monkeypatch.setattr(scanned, "BATCH", 64)
    monkeypatch.setattr(cohort_mod, "MANIFEST_CHUNK_ROWS", 64)
    _scan_peak(tmp_path, 20)  # first use: lazy imports and caches, not rows
    small, large = _scan_peak(tmp_path, 200), _scan_peak(tmp_path, 800)
    assert (large - small) / 600 < 300, (small, large)
