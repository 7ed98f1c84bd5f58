"""The patches table in parts (``store/patch_parts.py``, ``store/patch_import.py``): an import writes
only its new rows, a format-1 store migrates in place, a replace rewrites only the parts it touches,
two imports never overwrite each other, and ``store check``/``repair`` cover the parts."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_benchmark
from test_store_cohort import image_bytes

from mitoprobe.store import Store, StoreError, integrity
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.patch_import import Staging
from mitoprobe.store.migrations import FORMAT1_ENTRY, stamp_path
from mitoprobe.store.patch_parts import ROW_GROUP


def inodes(st: Store) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every part: unchanged means not rewritten."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in st.patch_parts.part_paths()}


def grow(cohort_csv, n: int, start: int = 0) -> None:
    """Add ``n`` new labelled images to an example cohort's manifest."""
    m = pd.read_csv(cohort_csv, keep_default_na=False)
    for i in range(start, start + n):
        (cohort_csv.parent / f"images/new{i}.png").write_bytes(image_bytes((40 + i, 40)))
        m.loc[len(m)] = dict(path=f"images/new{i}.png", label="normal", slide="s9", split="test", x=1, y=2, scanner="Z")
    m.to_csv(cohort_csv, index=False)


def test_a_cohort_import_writes_only_its_new_rows(tiny_store, tmp_path, monkeypatch):
    cohort = write_example_cohort(tmp_path / "cohort")
    old = inodes(tiny_store)
    out = tiny_store.import_cohort("MyLab", manifest=cohort)
    assert out.changed and inodes(tiny_store).items() >= old.items()  # no stored part rewritten
    (new,) = out.written.files
    assert pq.ParquetFile(new).metadata.num_rows == 20 and out.written.bytes == new.stat().st_size
    # a grown folder: only the 3 added files are decoded and written, in one more part
    before = inodes(tiny_store)
    grow(cohort, 3)
    import mitoprobe.store.patch_import as pi

    copied = []
    real_copy = pi.copy_rows
    monkeypatch.setattr(pi, "copy_rows", lambda *a, **k: copied.append(a[0]) or real_copy(*a, **k))
    out = tiny_store.import_cohort("MyLab", manifest=cohort)
    assert copied == []  # the staged part is committed as written: the new rows are written once
    (added,) = out.written.files
    assert pq.read_table(added, columns=["relpath"])["relpath"].to_pylist() == [f"images/new{i}.png" for i in range(3)]
    assert inodes(tiny_store).items() >= before.items() and len(inodes(tiny_store)) == len(before) + 1
    manifest = json.loads(tiny_store.patch_parts.manifest_path.read_text())
    assert [e["datasets"] for e in manifest["parts"]][-2:] == [{"MyLab": 20}, {"MyLab": 3}]
    p = tiny_store.patches()
    assert (p["dataset"] == "MyLab").sum() == 23 and p["patch_id"].is_unique
    assert tiny_store.sql("select count(*) n from patches where dataset = 'MyLab'")["n"][0] == 23
    assert integrity.check(tiny_store) == []


def test_replace_rewrites_only_the_parts_of_its_dataset(tiny_store, tmp_path):
    cohort = write_example_cohort(tmp_path / "cohort")
    tiny_store.import_cohort("MyLab", manifest=cohort)
    grow(cohort, 2)
    tiny_store.import_cohort("MyLab", manifest=cohort)
    bench_parts = inodes(tiny_store)
    mylab = [e["file"] for e in json.loads(tiny_store.patch_parts.manifest_path.read_text())["parts"]
             if "MyLab" in e["datasets"]]
    for f in mylab:
        bench_parts.pop(f)
    m = pd.read_csv(cohort, keep_default_na=False)
    m.loc[0, "label"] = "normal" if m.loc[0, "label"] != "normal" else "atypical"
    m.to_csv(cohort, index=False)
    out = tiny_store.import_cohort("MyLab", manifest=cohort, replace=True)
    assert not any(p.exists() for p in (tiny_store.patch_parts.dir / f for f in mylab))  # the 2 old parts dropped
    (part,) = out.written.files  # one new part holds all 22 (21 reused pixels + the relabelled one)
    assert pq.ParquetFile(part).metadata.num_rows == 22
    assert inodes(tiny_store).items() >= bench_parts.items()  # the benchmark's parts untouched
    p = tiny_store.patches().set_index("relpath")
    assert p.loc[m.loc[0, "path"], "label"].lower() == m.loc[0, "label"]
    # the reused pixels are the stored ones
    ids = p[p["dataset"] == "MyLab"]["patch_id"].tolist()
    assert len(tiny_store.images(ids)) == 22 and integrity.check(tiny_store) == []


def make_format1(st: Store, drop: tuple[str, ...] = ()) -> None:
    """Turn a store into the format before parts: one patches.parquet, no patches/ folder, no FORMAT.json
    stamp (without the columns ``drop``: added to the schema later)."""
    t = pa.concat_tables([pq.read_table(p) for p in st.patch_parts.part_paths()]).drop_columns(list(drop))
    pq.write_table(t, st.patch_parts.legacy_path, row_group_size=ROW_GROUP)
    for p in st.patch_parts.dir.iterdir():
        p.unlink()
    st.patch_parts.dir.rmdir()
    stamp_path(st.root).unlink(missing_ok=True)


def test_a_format1_store_is_read_as_it_is_and_migrated_in_place_by_the_next_import(tiny_store, tiny_benchmark,
                                                                                    tmp_path):
    want = tiny_store.patches()
    make_format1(tiny_store)
    legacy = tiny_store.patch_parts.legacy_path
    stat = (legacy.stat().st_ino, legacy.stat().st_mtime_ns, legacy.read_bytes())
    # read without any write: metadata, pixels, SQL, check
    pd.testing.assert_frame_equal(tiny_store.patches(), want)
    assert len(tiny_store.images(want["patch_id"].tolist()[:5])) == 5
    assert tiny_store.sql("select count(*) n from patches")["n"][0] == len(want)
    assert integrity.check(tiny_store) == [] and not tiny_store.patch_parts.dir.exists()
    assert not tiny_store.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv").changed
    assert not tiny_store.patch_parts.dir.exists()  # nothing changed: not even migrated
    # a cohort import migrates: the manifest lists the old file first, which is neither moved nor rewritten
    out = tiny_store.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    assert out.written.migrated and (legacy.stat().st_ino, legacy.stat().st_mtime_ns, legacy.read_bytes()) == stat
    entries = tiny_store.patch_parts.entries()
    assert entries[0] == dict(file=FORMAT1_ENTRY, rows=len(want),
                              datasets=want["dataset"].value_counts(sort=False).to_dict())
    assert len(tiny_store.patches()) == len(want) + 20 and integrity.check(tiny_store) == []
    # a benchmark replace rewrites it: the benchmark's new parts, the cohort's part kept
    other = make_benchmark(tmp_path / "other", seed=7)
    tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True)
    assert not legacy.exists()
    assert sorted(set(tiny_store.patches()["dataset"])) == ["AMi-Br", "AtNorM-Br", "AtNorM-MD", "MyLab"]
    assert integrity.check(tiny_store) == []


def test_a_format1_file_older_than_the_metadata_column(tiny_store, tmp_path):
    make_format1(tiny_store, drop=("metadata",))
    assert "metadata" not in tiny_store.patches().columns
    assert tiny_store.sql("select count(*) n from patches")["n"][0] == 36
    tiny_store.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    p = tiny_store.patches()
    assert p["metadata"].notna().sum() == 20 and p["metadata"].isna().sum() == 36  # the old rows: null
    assert tiny_store.sql("select count(metadata) n from patches")["n"][0] == 20
    assert integrity.check(tiny_store) == []


def test_a_format1_file_holding_a_cohort_keeps_it_when_the_benchmark_is_replaced(tiny_store, tmp_path):
    tiny_store.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    make_format1(tiny_store)  # one file holding the benchmark and the cohort
    cohort_ids = set(tiny_store.patches().query("dataset == 'MyLab'")["patch_id"])
    other = make_benchmark(tmp_path / "other", seed=7)
    out = tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True)
    assert not tiny_store.patch_parts.legacy_path.exists()
    p = tiny_store.patches()
    assert set(p.query("dataset == 'MyLab'")["patch_id"]) == cohort_ids  # rewritten into a part of its own
    assert len(out.written.files) == 4 and integrity.check(tiny_store) == []


def test_two_imports_at_once_never_lose_one(tiny_store, tmp_path, monkeypatch):
    """An import that finds the table changed since it read it (another import committed meanwhile)
    refuses, writing nothing; the other's rows stay."""
    first = write_example_cohort(tmp_path / "first")
    second = write_example_cohort(tmp_path / "second")
    real = Staging.finish
    state = {"done": False}

    def meanwhile(self):
        if not state["done"]:
            state["done"] = True
            Store(tiny_store.root).import_cohort("Second", manifest=second)
        return real(self)

    monkeypatch.setattr(Staging, "finish", meanwhile)
    with pytest.raises(StoreError, match="another import changed the patches table"):
        tiny_store.import_cohort("First", manifest=first)
    monkeypatch.undo()
    assert set(tiny_store.patches()["dataset"]) == {"AMi-Br", "AtNorM-Br", "AtNorM-MD", "Second"}
    assert not list(tiny_store.patch_parts.dir.glob(".tmp-*")) and not tiny_store.patch_parts.unlisted()
    assert tiny_store.import_cohort("First", manifest=first).changed  # run again: it lands


def test_iter_images_holds_one_row_group(tiny_store, tmp_path, monkeypatch):
    import mitoprobe.store.patch_parts as pp

    monkeypatch.setattr(pp, "ROW_GROUP", 7)
    cohort = write_example_cohort(tmp_path / "cohort")
    tiny_store.import_cohort("MyLab", manifest=cohort)
    (part,) = [p for p in tiny_store.patch_parts.part_paths() if "MyLab" in pq.read_table(p, columns=["dataset"])
               ["dataset"].to_pylist()]
    assert [pq.ParquetFile(part).metadata.row_group(i).num_rows for i in range(3)] == [7, 7, 6]
    sizes = [t.num_rows for t in tiny_store.iter_images()]
    assert max(sizes) <= 12 and sum(sizes) == len(tiny_store.patches())  # the benchmark's parts are small
    ids = tiny_store.patches().query("dataset == 'MyLab'")["patch_id"].tolist()[8:10]
    assert tiny_store.patch_parts.row_group_ids(ids) == [(part, 1, ids)]


def test_store_check_and_repair_cover_the_parts(tiny_store, tmp_path, monkeypatch, capsys):
    parts = tiny_store.patch_parts
    entries = parts.entries()
    # a part no manifest lists (a killed import): a warning; repair quarantines it
    stray = parts.dir / "part-20260101T000000000000-deadbeef.parquet"
    stray.write_bytes(parts.part_paths()[0].read_bytes())
    (w,) = integrity.check(tiny_store)
    assert w.kind == "unlisted-part" and w.severity == "warning" and w.path == stray
    integrity.repair(tiny_store, dry_run=False)
    assert not stray.exists() and integrity.check(tiny_store) == []
    # a listed part that went missing, and a manifest whose row count disagrees: errors
    gone = parts.path_of(entries[2])
    data = gone.read_bytes()
    gone.unlink()
    (e,) = integrity.errors(integrity.check(tiny_store))
    assert e.path == gone and "listed in patches/MANIFEST.json but missing" in e.what
    gone.write_bytes(data)
    doc = json.loads(parts.manifest_path.read_text())
    doc["parts"][1]["rows"] += 1
    parts.manifest_path.write_text(json.dumps(doc))
    (e,) = integrity.errors(integrity.check(tiny_store))
    assert "records" in e.what and e.path == parts.path_of(entries[1])
    # an unreadable manifest: repair quarantines it and lists every readable part again
    parts.manifest_path.write_text("{not json")
    (e,) = integrity.errors(integrity.check(tiny_store))
    assert e.path == parts.manifest_path
    actions = integrity.repair(tiny_store, dry_run=False)
    assert [a.action for a in actions][:2] == ["quarantine", "write manifest"]
    assert integrity.check(tiny_store) == [] and len(tiny_store.patches()) == 36


def test_the_embedding_job_reads_a_row_group_at_a_time(tiny_store, tmp_path, monkeypatch):
    from mitoprobe import embedder
    import mitoprobe.store.patch_parts as pp

    monkeypatch.setattr(pp, "ROW_GROUP", 7)
    tiny_store.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    seen = []
    real = pp.read_row_group

    def spy(path, group, columns=("patch_id", "png"), wanted=None):
        t = real(path, group, columns, wanted)
        seen.append(t.num_rows)
        return t

    monkeypatch.setattr(embedder.job, "read_row_group", spy)
    monkeypatch.setattr(Store, "images", lambda *a, **k: pytest.fail("the job asked for PNGs by id list"))
    s = embedder.embed(tiny_store, "handcrafted", progress=False, num_workers=0)
    assert s.rows_written == 56 and seen == [12, 12, 12, 7, 7, 6]  # one read per row group (benchmark: 12 each)


def test_a_damaged_format1_file_is_quarantined_without_writing_a_manifest(tiny_store):
    make_format1(tiny_store)
    legacy = tiny_store.patch_parts.legacy_path
    legacy.write_bytes(legacy.read_bytes()[: legacy.stat().st_size // 2])
    (e,) = integrity.errors(integrity.check(tiny_store))
    assert e.path == legacy and e.kind == "unreadable"
    integrity.repair(tiny_store, dry_run=False)
    assert not legacy.exists() and not tiny_store.patch_parts.dir.exists() and not tiny_store.has_patches()
    assert integrity.check(tiny_store) == []


def test_patches_of_given_ids_read_only_their_rows(tiny_store, tmp_path):
    """``Store.patches(patch_ids=...)``: a page about one patch (and its neighbours) reads their rows, in every
    part, with the same values as the whole table; unknown ids are simply absent."""
    st = Store(tmp_path / "st")
    import shutil

    shutil.copytree(tiny_store.root, st.root)
    st.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))  # a second part, unlabelled rows
    whole = st.patches()
    ids = [whole["patch_id"].iloc[0], whole["patch_id"].iloc[-1], "no-such-patch"]
    got = st.patches(patch_ids=ids)
    assert sorted(got["patch_id"]) == sorted(ids[:2])
    expected = whole[whole["patch_id"].isin(ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)  # Int64 only with nulls
    assert st.patches(["patch_id", "label"], patch_ids=[]).empty


def test_patches_of_given_ids_read_only_the_row_groups_holding_them(tiny_benchmark, tmp_path, monkeypatch):
    """Rows looked up by id come from the row groups holding them, in the table's order, wherever the
    groups cut; a part's ids are remembered per file version, so a new part is seen at once."""
    from mitoprobe.store import patch_parts

    monkeypatch.setattr(patch_parts, "ROW_GROUP", 3)
    st = Store(tmp_path / "st")
    st.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    [part] = st.patch_parts.part_paths()
    assert pq.ParquetFile(part).metadata.num_row_groups > 3
    whole = st.patches()
    ids = whole["patch_id"].iloc[[1, 5, 6, len(whole) - 1]].tolist()
    read = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, **kw: read.append(groups) or
                        real(self, groups, **kw))
    got = st.patches(patch_ids=ids[::-1] + ["no-such-patch"])
    expected = whole[whole["patch_id"].isin(ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)
    n = len(whole)
    assert read == [sorted({1 // 3, 5 // 3, 6 // 3, (n - 1) // 3})]
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", real)
    st.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv")  # new parts: their ids are read, not stale
    new = st.patches(["patch_id", "dataset"]).query("dataset != 'MyLab'")["patch_id"].iloc[-1]
    assert st.patches(["patch_id"], patch_ids=[new])["patch_id"].tolist() == [new]


def test_pngs_are_written_plain_and_the_small_columns_with_dictionaries(tiny_store, tmp_path):
    """PNGs are unique blobs: a dictionary page for them is wasted work on every read (thumbnails read a row
    group's PNG column each); the repetitive columns (dataset, split, label, slide) keep theirs."""
    tiny_store.import_cohort("MyLab", manifest=write_example_cohort(tmp_path / "cohort"))
    for part in tiny_store.patch_parts.part_paths():
        meta = pq.ParquetFile(part).metadata
        cols = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i) for i in range(meta.num_columns)}
        assert not any("DICTIONARY" in e for e in cols["png"].encodings), (part.name, cols["png"].encodings)
        assert cols["dataset"].has_dictionary_page and cols["label"].has_dictionary_page


def test_a_damaged_png_page_is_reported_naming_its_part(tiny_store):
    """The thumbnails' reader (decoding a row group only up to the patches it wants) reads through the same
    guard as every other reader, and a part rewritten in place is never read with its old footer."""
    from mitoprobe.store import DamagedStoreError

    ids = tiny_store.patches(columns=["patch_id"])["patch_id"].tolist()
    assert len(tiny_store.images(ids[:3])) == 3  # the footer is now parsed and kept
    part = tiny_store.patch_parts.part_paths()[0]
    md = pq.read_metadata(part)
    png = md.schema.names.index("png")
    chunk = md.row_group(0).column(png)
    start, size = chunk.data_page_offset, chunk.total_compressed_size
    raw = bytearray(part.read_bytes())
    raw[start:start + size] = b"\xff" * size  # the first row group's PNG pages, headers included
    part.write_bytes(bytes(raw))
    with pytest.raises(DamagedStoreError, match=part.name):
        tiny_store.images(ids[:1])
