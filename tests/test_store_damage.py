"""A damaged store: every command stops with one line naming the damaged path (exit 2, no traceback),
``mitoprobe store check`` finds the damage, ``store repair --yes`` fixes or quarantines it, a second
check is clean, and nothing that was readable before is lost.

One small store (tiny benchmark, handcrafted vectors in 4 parts, one simpleshot sweep) is built per
module and copied per test."""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_benchmark, make_six_slide_store, run_cli

from mitoprobe.store import DamagedStoreError, Store, StoreError, integrity

MODEL = "handcrafted"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Store:
    from mitoprobe import embedder
    from mitoprobe.classifiers import runner

    st = make_six_slide_store(tmp_path_factory.mktemp("damage"))
    embedder.embed(st, MODEL, progress=False, num_workers=0, batch_size=16, chunk_rows=16)
    runner.sweep(st, MODEL, heads=["simpleshot"], n_boot=10, show_progress=False)
    assert len(st.features.sets()[0].parts) >= 3 and st.folds_path.is_file()
    assert integrity.check(st) == []
    return st


@pytest.fixture
def st(built, tmp_path) -> Store:
    root = tmp_path / "store"
    shutil.copytree(built.root, root)
    return Store(root)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file but the derived ones (LanceDB tables and their search_stats.json), locks and
    quarantine, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in ("lance", "locks", "quarantine")
            and p.name != "search_stats.json"}


def assert_nothing_lost(before: dict[str, bytes], root: Path) -> None:
    """Each file from before is still in place, byte for byte, or moved to quarantine/<ts>/ unchanged."""
    moved = {str(Path(*p.relative_to(root).parts[2:])): p.read_bytes()
             for p in (root / "quarantine").rglob("*") if p.is_file()} if (root / "quarantine").is_dir() else {}
    for rel, data in before.items():
        here = root / rel
        assert (here.is_file() and here.read_bytes() == data) or moved.get(rel) == data, rel


def damage(path: Path) -> bytes:
    """Truncate a file to half (an interrupted copy); returns the damaged bytes."""
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data)
    return data


def cli(monkeypatch, capsys, st: Store, *args: str) -> tuple[int, str]:
    return run_cli(monkeypatch, capsys, *args, "--store", str(st.root))


def assert_refused(monkeypatch, capsys, st: Store, path: Path, *commands: tuple[str, ...], code: int = 2) -> None:
    for args in commands:
        rc, out = cli(monkeypatch, capsys, st, *args)
        assert rc == code, (args, out)
        assert "Traceback" not in out, (args, out)
        assert str(path) in out, (args, out)
        assert "mitoprobe store" in out or "mitoprobe embed" in out, (args, out)


def check_repair_check(monkeypatch, capsys, st: Store, path: Path, kind: str) -> str:
    """store check finds ``path`` (exit 2), repair --yes fixes it, a second check is clean (exit 0)."""
    rc, out = cli(monkeypatch, capsys, st, "store", "check")
    assert rc == 2 and str(path) in out and "Traceback" not in out, out
    assert any(p.kind == kind and p.path == path for p in integrity.errors(integrity.check(st)))
    rc, dry = cli(monkeypatch, capsys, st, "store", "repair")
    assert rc == 0 and "would " in dry and "dry run" in dry, dry
    assert integrity.errors(integrity.check(st))  # the dry run changed nothing
    rc, out = cli(monkeypatch, capsys, st, "store", "repair", "--yes")
    assert rc == 0 and "done " in out and "ok:" in out, out
    assert not integrity.errors(integrity.check(st))
    rc, out = cli(monkeypatch, capsys, st, "store", "check")
    assert rc == 0 and "ok:" in out, out
    return out


PROBE = ("probe", "--model", MODEL, "--head", "simpleshot")
EMBED = ("embed", "--model", MODEL, "--num-workers", "0")


def test_corrupt_embedding_part(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    part = eset.parts[1]
    before = snapshot(st.root)
    bad = damage(part)
    before.pop(str(part.relative_to(st.root)))
    assert_refused(monkeypatch, capsys, st, part, ("store", "info"), EMBED, PROBE,
                   ("sql", f"select count(*) from emb_{eset.recipe_id}"))
    out = check_repair_check(monkeypatch, capsys, st, part, "unreadable")
    assert f"incomplete" in out  # the warning: the set lacks the quarantined rows
    assert [p.read_bytes() for p in (st.root / "quarantine").rglob(part.name)] == [bad]
    before.pop(str(eset.complete_path.relative_to(st.root)))  # moved to quarantine: checked below
    assert_nothing_lost(before, st.root)
    assert not st.features.get(eset.recipe_id).complete
    with pytest.raises(StoreError, match=f"incomplete.*mitoprobe embed --model {MODEL}"):
        st.features.read(MODEL, eset.recipe_id)
    # The next embed recomputes only the missing rows and the store is whole again.
    rc, out = cli(monkeypatch, capsys, st, *EMBED)
    assert rc == 0, out
    assert integrity.check(st) == []
    keys, _ = st.features.read(MODEL, eset.recipe_id)
    assert len(keys) == len(st.patches()) and not keys.duplicated().any()


def test_truncated_recipe_json(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    meta = eset.path / "recipe.json"
    before = snapshot(st.root)
    damage(meta)
    before.pop(str(meta.relative_to(st.root)))
    assert_refused(monkeypatch, capsys, st, meta, ("store", "info"), EMBED, PROBE, ("sql", "select 1"))
    check_repair_check(monkeypatch, capsys, st, meta, "recipe")
    assert not eset.path.exists() and not st.features.lance_path(eset.recipe_id).exists()
    assert_nothing_lost(before, st.root)  # the parts and COMPLETE went to quarantine intact
    rc, out = cli(monkeypatch, capsys, st, "store", "info")
    assert rc == 0 and "no embedding sets yet" in out


def test_corrupt_patches(st, monkeypatch, capsys, built):
    path = st.patch_parts.part_paths()[0]  # one part of the patches table (AMi-Br's)
    before = snapshot(st.root)
    damage(path)
    before.pop(str(path.relative_to(st.root)))
    assert_refused(monkeypatch, capsys, st, path, ("store", "info"), ("sql", "select count(*) from patches"),
                   EMBED, PROBE)
    out = check_repair_check(monkeypatch, capsys, st, path, "unreadable")
    assert "warning:" in out and "data import" in out  # AMi-Br's patches are gone: import them again
    assert_nothing_lost(before, st.root)
    # Importing the same data again restores the store (vectors and results keep their keys); the folds,
    # quarantined with the AMi-Br part, are recomputed by the next probe (deterministic).
    bench = built.root.parent / "AMi-Br_Benchmark"
    assert st.import_dataset(bench, bench / "AMI-BR.csv").changed
    assert [p.kind for p in integrity.check(st)] == ["folds-missing"]


def test_corrupt_results_part(st, monkeypatch, capsys):
    part = st.results.parts("runs")[0]
    before = snapshot(st.root)
    damage(part)
    before.pop(str(part.relative_to(st.root)))
    assert_refused(monkeypatch, capsys, st, part, ("store", "info"), ("sql", "select count(*) from runs"), PROBE)
    check_repair_check(monkeypatch, capsys, st, part, "unreadable")
    assert_nothing_lost(before, st.root)
    assert len(st.results.read("predictions")) > 0 and st.results.read("runs").empty


def test_deleted_lance_table(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    lance = st.features.lance_path(eset.recipe_id)
    q = st.features.read(MODEL, eset.recipe_id)[1][0]
    hits = st.features.search(eset, q, k=3)
    before = snapshot(st.root)
    shutil.rmtree(lance)
    with pytest.raises(DamagedStoreError, match=r"lance.*missing.*mitoprobe store repair --yes"):
        st.features.search(eset, q, k=3)
    check_repair_check(monkeypatch, capsys, st, lance, "lance")
    assert_nothing_lost(before, st.root)
    assert st.features.search(eset, q, k=3)["patch_id"].tolist() == hits["patch_id"].tolist()


def test_lance_table_that_lost_rows(st, monkeypatch, capsys):
    """A table that lost rows would answer over fewer patches: every reader compares its row count
    with the COMPLETE record and stops with the repair hint (issue 22)."""
    eset = st.features.sets()[0]
    lance = st.features.lance_path(eset.recipe_id)
    q = st.features.read(MODEL, eset.recipe_id)[1][0]
    hits = st.features.search(eset, q, k=3)
    before = snapshot(st.root)
    rows = st.features.require_complete(eset)
    lost = sorted(st.patches()["patch_id"])[:3]
    tbl = st.features.lance_table(eset)
    tbl.delete("patch_id IN (" + ", ".join(f"'{p}'" for p in lost) + ")")
    n = tbl.count_rows()
    assert 0 < n < rows
    want = rf"{lance}: the LanceDB table of set {MODEL} has {n} rows but its COMPLETE record says {rows}.*" \
           r"mitoprobe store repair --yes"
    with pytest.raises(DamagedStoreError, match=want):
        st.features.search(eset, q, k=3)
    with pytest.raises(DamagedStoreError, match=want):
        st.features.searcher(eset)  # what `mitoprobe search` (classifiers.neighbours) opens
    rc, out = cli(monkeypatch, capsys, st, "search", "--model", MODEL, "--dataset", "AMi-Br", "--k", "2")
    assert rc == 2 and "Traceback" not in out and str(lance) in out and "mitoprobe store repair" in out, out
    check_repair_check(monkeypatch, capsys, st, lance, "lance")
    assert_nothing_lost(before, st.root)
    assert st.features.search(eset, q, k=3)["patch_id"].tolist() == hits["patch_id"].tolist()


def test_deleted_complete(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    eset.complete_path.unlink()
    before = snapshot(st.root)
    rc, out = cli(monkeypatch, capsys, st, "store", "info")
    assert rc == 0 and "False" in out  # listed as incomplete
    rc, out = cli(monkeypatch, capsys, st, *PROBE)
    assert rc == 2 and "Traceback" not in out and f"mitoprobe embed --model {MODEL}" in out, out
    assert str(eset.path) in out
    check_repair_check(monkeypatch, capsys, st, eset.complete_path, "complete")
    assert st.features.get(eset.recipe_id).complete
    assert_nothing_lost(before, st.root)
    # `embed` would have fixed it as well: it finds every key stored and writes COMPLETE again.
    eset.complete_path.unlink()
    rc, out = cli(monkeypatch, capsys, st, *EMBED)
    assert rc == 0 and st.features.get(eset.recipe_id).complete and integrity.check(st) == []


def test_deleted_folds(st, monkeypatch, capsys, caplog):
    """Folds are recomputed deterministically, so a deleted folds.parquet is a warning, not damage:
    check says so (exit 0) and the probe says it recomputes them, to the same folds."""
    saved = st.read_folds()
    st.folds_path.unlink()
    rc, out = cli(monkeypatch, capsys, st, "store", "check")
    assert rc == 0 and "warning:" in out and str(st.folds_path) in out and "recomputes" in out, out
    with caplog.at_level(logging.WARNING):
        rc, out = cli(monkeypatch, capsys, st, *PROBE)
    assert rc == 0, out
    assert any(str(st.folds_path) in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)
    assert st.read_folds().equals(saved)
    assert integrity.check(st) == []


def test_mismatched_folds_are_set_aside(st, monkeypatch, capsys):
    folds = st.read_folds()
    st.write_folds(folds.iloc[::-1].reset_index(drop=True))  # readable, but not the train order
    rc, out = cli(monkeypatch, capsys, st, *PROBE)  # probe points to repair, as store check does
    assert rc == 2 and "Traceback" not in out and str(st.folds_path) in out, out
    assert "mitoprobe store repair --yes" in " ".join(out.split()) and "delete" not in out, out
    check_repair_check(monkeypatch, capsys, st, st.folds_path, "folds")
    assert not st.folds_path.exists()
    rc, out = cli(monkeypatch, capsys, st, *PROBE)
    assert rc == 0 and st.read_folds().equals(folds), out


def test_part_copied_into_finished_set(st, monkeypatch, capsys):
    eset = st.features.sets()[0]
    copy = eset.path / "part-99999-copied00.parquet"
    shutil.copyfile(eset.parts[0], copy)  # a newer mtime: the later duplicate
    before = snapshot(st.root)
    before.pop(str(copy.relative_to(st.root)))
    assert_refused(monkeypatch, capsys, st, eset.path, ("store", "info"), PROBE, EMBED)
    check_repair_check(monkeypatch, capsys, st, copy, "duplicates")
    assert not copy.exists()
    assert_nothing_lost(before, st.root)
    keys, _ = st.features.read(MODEL, eset.recipe_id)
    assert len(keys) == len(st.patches()) and not keys.duplicated().any()


def test_partly_duplicated_part_is_rewritten(st):
    """A later part holding both duplicate and new keys: repair keeps its new rows, drops the rest."""
    eset = st.features.sets()[0]
    a, b = eset.parts[0], eset.parts[1]
    import pyarrow as pa
    import pyarrow.parquet as pq

    mixed = pa.concat_tables([pq.read_table(a), pq.read_table(b)])
    b.unlink()
    pq.write_table(mixed, eset.path / "part-77777-mixed000.parquet")
    assert any(p.kind == "duplicates" for p in integrity.check(st))
    actions = integrity.repair(st, dry_run=False)
    assert any(x.action == "rewrite part" for x in actions)
    assert integrity.check(st) == []
    keys, X = st.features.read(MODEL, eset.recipe_id)
    assert len(keys) == len(st.patches()) and np.isfinite(X).all()


def test_check_reads_every_byte(st):
    """Garbage inside a part (its footer intact) is found too, not only a broken footer."""
    part = st.features.sets()[0].parts[0]
    data = bytearray(part.read_bytes())
    data[8:len(data) // 2] = b"\xab" * (len(data) // 2 - 8)
    part.write_bytes(bytes(data))
    assert [p.path for p in integrity.errors(integrity.check(st)) if p.kind == "unreadable"] == [part]


# -- environment failures inside store writes: one clear StoreError, the store byte-identical -----------
def files(root: Path) -> dict[str, bytes]:
    """Every file (locks excepted: an OS lock file is bookkeeping, not store content)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "locks"}


def dirs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir() and p.relative_to(root).parts[0] != "locks"}


def raising(err: int):
    import os as _os

    def fail(*args, **kwargs):
        raise OSError(err, _os.strerror(err), str(args[-1]) if args else None)

    return fail


@pytest.mark.parametrize("err, cause", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied")])
def test_failed_rename_in_each_writer(tiny_store, tiny_benchmark, tmp_path, monkeypatch, err, cause):
    """os.replace fails (disk full, read-only, not writable) in an import over a store, a result append
    (whose folders do not exist yet) and an embedding chunk: StoreError naming the path and the cause."""
    import mitoprobe.store.atomic as atomic

    ids = tiny_store.patches()["patch_id"].tolist()
    w = tiny_store.features.writer("r1", "toy", {"cls": 4}, {})
    other = make_benchmark(tmp_path / "other", seed=7)
    before, before_dirs = files(tiny_store.root), dirs(tiny_store.root)
    monkeypatch.setattr(atomic.os, "replace", raising(err))
    writes = [
        # the import's first rename is its lock's record (locks/patches.json), else a part or the manifest
        (lambda: tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True), f"{tiny_store.root}/(locks|patches)"),
        (lambda: tiny_store.results.append("runs", pd.DataFrame({"run_id": ["x"]})), tiny_store.results.dir / "runs"),
        (lambda: w.write_chunk(ids[:2], ["none"] * 2, {"cls": np.ones((2, 4), np.float32)}), w.eset.path),
    ]
    for write, where in writes:
        with pytest.raises(StoreError, match=f"cannot write {where}.*{cause}.*nothing in the store was changed"):
            write()
    monkeypatch.undo()
    assert files(tiny_store.root) == before and dirs(tiny_store.root) == before_dirs  # no temp file, no new folder
    w.close()


def test_disk_full_while_writing_parquet(tiny_store, monkeypatch):
    import mitoprobe.store.atomic as atomic

    before = files(tiny_store.root)
    # every Parquet write, whole tables (folds) and row groups (results, several frames to one part)
    monkeypatch.setattr(atomic.pq.ParquetWriter, "write_table", raising(errno.ENOSPC))
    with pytest.raises(StoreError, match="no space left on the device"):
        tiny_store.results.append("predictions", pd.DataFrame({"run_id": ["x"], "patch_id": ["p"]}))
    with pytest.raises(StoreError, match="no space left on the device"):
        tiny_store.results.append("predictions", [pd.DataFrame({"run_id": ["x"], "patch_id": [p]}) for p in "pq"])
    with pytest.raises(StoreError, match="no space left on the device"):
        tiny_store.write_folds(pd.DataFrame({"patch_id": ["p"], "train_row": [0], "slide": ["s"], "label": ["Normal"],
                                             "y": [0], "fold": [0]}))
    assert files(tiny_store.root) == before and not (tiny_store.root / "results").exists()


def test_new_set_on_a_full_disk_leaves_no_folder(tiny_store, monkeypatch):
    import mitoprobe.store.atomic as atomic

    before = dirs(tiny_store.root)
    real, fail = os.replace, raising(errno.ENOSPC)
    monkeypatch.setattr(atomic.os, "replace",
                        lambda src, dst: (fail if str(dst).endswith("recipe.json") else real)(src, dst))
    with pytest.raises(StoreError, match="recipe.json.*no space left"):
        tiny_store.features.writer("r9", "toy", {"cls": 4}, {})
    monkeypatch.undo()
    assert dirs(tiny_store.root) == before
    assert tiny_store.features.lock("r9").held_elsewhere() is None
    tiny_store.features.writer("r9", "toy", {"cls": 4}, {}).close()  # the lock was released


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_store_directory(tiny_store):
    before = files(tiny_store.root)
    os.chmod(tiny_store.root, 0o555)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            tiny_store.results.append("runs", pd.DataFrame({"run_id": ["x"]}))
        with pytest.raises(StoreError, match="permission denied"):
            tiny_store.features.writer("r1", "toy", {"cls": 4}, {})
    finally:
        os.chmod(tiny_store.root, 0o755)
    assert files(tiny_store.root) == before


def test_store_path_is_a_file(tmp_path, tiny_benchmark, monkeypatch, capsys):
    path = tmp_path / "not-a-folder"
    path.write_text("hello")
    st = Store(path)
    with pytest.raises(StoreError, match="is a file, not a store folder"):
        st.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv")
    with pytest.raises(StoreError, match="cannot write .*is a file where a folder is needed"):
        st.results.append("runs", pd.DataFrame({"run_id": ["x"]}))
    with pytest.raises(StoreError, match="is a file where a folder is needed"):
        st.features.writer("r1", "toy", {"cls": 4}, {})
    code, out = run_cli(monkeypatch, capsys, "store", "check", "--store", str(path))
    assert code == 2 and "is a file, not a store folder" in out and "Traceback" not in out, out
    assert path.read_text() == "hello"


def test_lance_table_that_differs_or_cannot_be_read(st):
    eset = st.features.sets()[0]
    t = st.features.read_table(eset)
    vec = np.asarray(t["vector"].combine_chunks().flatten()).reshape(t.num_rows, -1) + 1.0
    import pyarrow as pa

    t = t.set_column(2, "vector", pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()),
                                                                    vec.shape[1]))
    st.features._lance().create_table(eset.recipe_id, data=t, mode="overwrite")  # same rows, other vectors
    [problem] = integrity.check(st)
    assert problem.kind == "lance" and problem.what.startswith("LanceDB table differs from the Parquet parts at")
    integrity.repair(st, dry_run=False)
    assert integrity.check(st) == []
    for f in (st.features.lance_path(eset.recipe_id) / "data").iterdir():
        f.write_bytes(b"garbage")
    assert [p.kind for p in integrity.check(st)] == ["lance"]
    actions = integrity.repair(st, dry_run=False)
    assert [a.action for a in actions] == ["quarantine", "rebuild LanceDB table"]
    assert integrity.check(st) == []
