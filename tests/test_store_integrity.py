"""Integrity: idempotent import, crash-safe writes, refused duplicates / wrong dimensions / stale
vectors, and resumable embedding writers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import make_benchmark, patch_files
from mitoprobe.store import integrity

from mitoprobe.store import StaleFeaturesError, Store, StoreError
from mitoprobe.store.atomic import TMP_PREFIX, atomic_write

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = {"cls": 8, "mean": 4}


def vectors(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((n, d)).astype(np.float32) for k, d in OUTPUTS.items()}


def open_writer(st: Store, recipe_id: str = "r1", name: str = "toy"):
    return st.features.writer(recipe_id, name, OUTPUTS, {"model": "toy", "weights": "random"})


def test_second_import_changes_nothing(tiny_store, tiny_benchmark, monkeypatch, capsys):
    from mitoprobe.cli import main

    before = patch_files(tiny_store)
    mtime = tiny_store.patch_parts.manifest_path.stat().st_mtime_ns
    monkeypatch.setattr(sys, "argv", ["mitoprobe", "data", "import", str(tiny_benchmark), "--store", str(tiny_store.root)])
    main()
    out = capsys.readouterr().out
    assert "nothing changed" in out
    assert patch_files(tiny_store) == before
    assert tiny_store.patch_parts.manifest_path.stat().st_mtime_ns == mtime
    assert not tiny_store.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv").changed


def test_changed_data_is_reimported(tiny_store, tmp_path):
    other = make_benchmark(tmp_path / "other", seed=7)
    assert tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True).changed


def test_crash_between_write_and_rename_keeps_previous_state(tiny_store, tmp_path):
    """Kill the process (os._exit, no cleanup) after the new parts are written, before the manifest's
    rename: the old table stays readable everywhere, the new parts are invisible to readers, `store
    check` names them, and the next import removes them."""
    before = patch_files(tiny_store)
    other = make_benchmark(tmp_path / "other", seed=7)
    script = textwrap.dedent(f"""
        import os
        import mitoprobe.store.atomic as atomic
        real = atomic.atomic_write
        crash = lambda: os._exit(3)
        atomic.atomic_write = lambda path, write, **kw: real(
            path, write, _before_rename=crash if str(path).endswith("MANIFEST.json") else None)
        from mitoprobe.store import Store
        Store({str(tiny_store.root)!r}).import_dataset({str(other)!r}, {str(other / 'AMI-BR.csv')!r}, replace=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    manifest_tmp = list(tiny_store.patch_parts.dir.glob(f"{TMP_PREFIX}*"))
    assert len(manifest_tmp) == 1 and manifest_tmp[0].name.startswith(f"{TMP_PREFIX}MANIFEST.json")
    unlisted = tiny_store.patch_parts.unlisted()
    assert len(unlisted) == 3  # one new part per dataset, written but never committed ...
    assert {k: v for k, v in patch_files(tiny_store).items() if k in before} == before  # ... the table untouched
    assert len(tiny_store.patches()) == 36
    assert tiny_store.sql("select count(*) n from patches")["n"][0] == 36
    found = {p.path: p for p in integrity.check(tiny_store)}
    assert all(found[p].kind == "unlisted-part" and found[p].severity == "warning" for p in unlisted)
    # The next import (holding the patches lock: no other import commits) removes the unlisted parts at
    # once, and a temp file once it is old enough not to be another import's staging.
    assert tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True).changed
    assert not tiny_store.patch_parts.unlisted() and not any(p.exists() for p in unlisted)
    assert list(tiny_store.patch_parts.dir.glob(f"{TMP_PREFIX}*")) == manifest_tmp
    old = time.time() - 2 * 3600
    os.utime(manifest_tmp[0], (old, old))
    assert not tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True).changed  # no commit: no sweep
    assert tiny_store.import_dataset(make_benchmark(tmp_path / "again", seed=11), replace=True).changed
    assert not list(tiny_store.patch_parts.dir.glob(f"{TMP_PREFIX}*"))


def test_failed_rename_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    target.write_text("old")

    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, lambda tmp: tmp.write_text("new"), _before_rename=boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_os_replace_failure_during_import(tiny_store, tmp_path, monkeypatch):
    before = patch_files(tiny_store)
    other = make_benchmark(tmp_path / "other", seed=7)
    import mitoprobe.store.atomic as atomic

    def fail(src, dst):
        raise OSError("simulated crash in rename")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="simulated crash"):
        tiny_store.import_dataset(other, other / "AMI-BR.csv", replace=True)
    monkeypatch.undo()
    assert patch_files(tiny_store) == before
    assert not list(tiny_store.root.glob(f"{TMP_PREFIX}*")) and not list(tiny_store.patch_parts.dir.glob(f"{TMP_PREFIX}*"))


def test_crash_mid_embedding_job_resumes_without_duplicates(tiny_store, tmp_path):
    ids = tiny_store.patches()["patch_id"].tolist()
    vec = vectors(len(ids))
    w = open_writer(tiny_store)
    assert w.write_chunk(ids[:10], ["none"] * 10, {k: v[:10] for k, v in vec.items()}) == 10
    # The next chunk "crashes" between write and rename: a temp part remains, no visible part.
    import mitoprobe.store.atomic as atomic

    real = atomic.atomic_write

    class Crash(BaseException):
        pass

    def crash_before_rename(path, write, **kw):
        def die():
            raise Crash

        return real(path, write, _before_rename=die)

    atomic.atomic_write = crash_before_rename
    try:
        with pytest.raises(Crash):
            w.write_chunk(ids[10:20], ["none"] * 10, {k: v[10:20] for k, v in vec.items()})
    finally:
        atomic.atomic_write = real
    eset = tiny_store.features.get("r1")
    assert len(eset.parts) == 1
    con = duckdb.connect()
    assert con.execute(f"select count(*) from read_parquet('{eset.path}/part-*.parquet')").fetchone()[0] == 10

    w2 = open_writer(tiny_store)
    assert len(w2.done_keys()) == 10
    assert w2.write_chunk(ids, ["none"] * len(ids), vec) == len(ids) - 10  # only the missing keys
    assert w2.write_chunk(ids, ["none"] * len(ids), vec) == 0
    w2.finalize(expected_rows=len(ids))
    keys, X = tiny_store.features.read("toy", "r1")
    assert len(keys) == len(ids) and not keys.duplicated().any()
    order = {p: i for i, p in enumerate(ids)}
    np.testing.assert_array_equal(X[:, :8], vec["cls"][[order[p] for p in keys.patch_id]])


def test_duplicate_keys_in_a_chunk_refused(tiny_store):
    w = open_writer(tiny_store)
    with pytest.raises(StoreError, match="duplicate"):
        w.write_chunk(["a", "a"], ["none", "none"], vectors(2))
    assert not tiny_store.features.get("r1").parts


def test_wrong_dimension_refused(tiny_store):
    w = open_writer(tiny_store)
    bad = vectors(3)
    bad["cls"] = np.zeros((3, 9), np.float32)
    with pytest.raises(StoreError, match=r"shape \(3, 9\), expected \(n, 8\)"):
        w.write_chunk(["a", "b", "c"], ["none"] * 3, bad)
    assert not tiny_store.features.get("r1").parts


def test_non_finite_and_wrong_outputs_refused(tiny_store):
    w = open_writer(tiny_store)
    bad = vectors(2)
    bad["mean"][1, 0] = np.nan
    with pytest.raises(StoreError, match="non-finite"):
        w.write_chunk(["a", "b"], ["none"] * 2, bad)
    with pytest.raises(StoreError, match="expected"):
        w.write_chunk(["a", "b"], ["none"] * 2, {"cls": vectors(2)["cls"]})
    assert not tiny_store.features.get("r1").parts


def test_reopening_with_other_dimensions_refused(tiny_store):
    open_writer(tiny_store)
    with pytest.raises(StoreError, match="refusing to mix vectors"):
        tiny_store.features.writer("r1", "toy", {"cls": 16, "mean": 4}, {})


def test_stale_recipe_refused_by_default(tiny_store, caplog):
    ids = tiny_store.patches()["patch_id"].tolist()[:5]
    w = open_writer(tiny_store, recipe_id="old")
    w.write_chunk(ids, ["none"] * 5, vectors(5))
    w.finalize()
    with pytest.raises(StaleFeaturesError, match="STALE FEATURES.*'toy'.*old.*new"):
        tiny_store.features.read("toy", recipe_id="new")
    with caplog.at_level(logging.WARNING):
        keys, X = tiny_store.features.read("toy", recipe_id="new", allow_stale=True)
    assert X.shape == (5, 12)
    assert any("USING STALE FEATURES" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    # The matching id reads quietly.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tiny_store.features.read("toy", recipe_id="old")
    assert not caplog.records


def test_finalize_refuses_incomplete_set(tiny_store):
    w = open_writer(tiny_store)
    w.write_chunk(["a"], ["none"], vectors(1))
    with pytest.raises(StoreError, match="1 of 5 rows stored; run the job again to resume"):
        w.finalize(expected_rows=5)
    assert not tiny_store.features.get("r1").complete


def test_two_writers_never_overwrite_and_duplicates_are_caught(tiny_store):
    ids = tiny_store.patches()["patch_id"].tolist()[:4]
    a, b = open_writer(tiny_store), open_writer(tiny_store)  # two jobs on the same set at once
    a.write_chunk(ids[:2], ["none"] * 2, vectors(2))
    b.write_chunk(ids, ["none"] * 4, vectors(4, seed=1))
    assert len(tiny_store.features.get("r1").parts) == 2
    with pytest.raises(StoreError, match="6 rows but 4 distinct .* two jobs wrote it at once"):
        b.finalize()


@pytest.mark.parametrize("batch", [integrity.RESULT_BATCH, 3])
def test_check_finds_result_rows_stored_twice_across_its_read_batches(tiny_store, monkeypatch, batch):
    """``store check`` reads a result part a batch at a time (only the rows' key hashes are kept): copies
    are found wherever the batches cut, within a part and across parts, and a split of null means "test"."""
    import pandas as pd

    monkeypatch.setattr(integrity, "RESULT_BATCH", batch)
    rows = pd.DataFrame({"run_id": ["a"] * 5 + ["b"] * 5, "patch_id": [f"p{i}" for i in range(5)] * 2,
                         "test_set": "T", "split": [None, "test", "val", "val", "test"] * 2, "fold": 0})
    tiny_store.results.append("predictions", rows)
    copies = pd.concat([rows.iloc[[1, 6]], rows.iloc[[2, 2]].assign(split="val"),
                        rows.iloc[[0]].assign(split="test")], ignore_index=True)  # p0's null split is "test"
    tiny_store.results.append("predictions", pd.concat([copies, rows.iloc[[3]].assign(run_id="c")]))
    [problem] = integrity.check(tiny_store)
    assert problem.kind == "duplicates" and problem.what.startswith("5 predictions rows already stored")
    assert problem.path == max(tiny_store.results.parts("predictions"), key=lambda p: p.stat().st_mtime_ns)


def test_check_reads_only_the_key_columns_of_result_parts(tiny_store, monkeypatch):
    """``store check``'s cost does not grow with the results' other columns (issue 30): the duplicate
    check asks Parquet for the unique-key columns only."""
    import pandas as pd
    import pyarrow.parquet as pq

    tiny_store.results.append("predictions", pd.DataFrame({
        "run_id": ["a"] * 3, "patch_id": ["p0", "p1", "p2"], "test_set": "T", "split": "test", "fold": 0,
        "prob": [0.1, 0.5, 0.9]}))
    asked, real = [], pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert integrity.check(tiny_store) == []
    assert asked == [["run_id", "test_set", "split", "patch_id"]]
