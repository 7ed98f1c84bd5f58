"""One writer per embedding set, read-only ``mitoprobe sql``, and imports that would drop patches.

The lock policy: a second job on a set that a live process is writing exits 2 at once, naming the
holder (pid, host, command, since); it never waits. A lock left by a dead process is taken over
with a warning."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_benchmark, png_bytes, run_cli

from mitoprobe.store import Store, StoreError, integrity

REPO = Path(__file__).resolve().parents[1]
MODEL = "handcrafted"

HOLDER = textwrap.dedent("""
    # Write half of the handcrafted set, say so, wait for the test's "go", write the rest, finish.
    import sys, time
    from pathlib import Path
    import numpy as np
    from mitoprobe import embedder
    from mitoprobe.store import Store

    st = Store(sys.argv[1])
    recipe = embedder.resolve_recipe("handcrafted", st.root)
    rid = embedder.recipe_id_of("handcrafted")
    ids = st.patches(columns=["patch_id"])["patch_id"].tolist()
    vec = lambda n: {k: np.ones((n, d), np.float32) for k, d in recipe.output_dims.items()}
    w = st.features.writer(rid, recipe.name, recipe.output_dims, {"run": {"views": ["none"]}})
    half = len(ids) // 2
    w.write_chunk(ids[:half], ["none"] * half, vec(half))
    Path(sys.argv[2]).write_text("ready")
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
    w.write_chunk(ids, ["none"] * len(ids), vec(len(ids)))
    w.finalize(expected_rows=len(ids))
""")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "the holder never got ready"
        time.sleep(0.05)


def _one_row_per_key(st: Store) -> None:
    from mitoprobe import embedder

    keys, _ = st.features.read(MODEL, embedder.recipe_id_of(MODEL))
    assert len(keys) == len(st.patches()) and not keys.duplicated().any()


def test_second_writer_exits_2_naming_the_holder(tiny_store, tmp_path, monkeypatch, capsys):
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tiny_store.root), str(ready), str(go)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, proc)
        code, out = run_cli(monkeypatch, capsys, "embed", "--model", MODEL, "--num-workers", "0",
                            "--store", str(tiny_store.root))
        assert code == 2 and "Traceback" not in out, out
        assert f"is being written by pid {proc.pid} on host {socket.gethostname()}" in out
        assert "since 20" in out and "-c" in out  # the holder's command line and start time
        # Readers refuse the set while it is written, naming the holder too.
        from mitoprobe import embedder

        with pytest.raises(StoreError, match=f"being written by pid {proc.pid}"):
            tiny_store.features.read(MODEL, embedder.recipe_id_of(MODEL))
        assert [p.kind for p in integrity.check(tiny_store)] == ["writing"]  # a warning, not damage
        go.write_text("go")
        assert proc.wait(timeout=60) == 0, proc.communicate()
    finally:
        proc.kill()
    code, out = run_cli(monkeypatch, capsys, "embed", "--model", MODEL, "--num-workers", "0",
                        "--store", str(tiny_store.root))
    assert code == 0, out
    _one_row_per_key(tiny_store)
    assert integrity.check(tiny_store) == []


RACER = textwrap.dedent("""
    # One embedding job, store-only: every patch in chunks of 4 rows, then finish; exit 2 when locked out.
    import sys, time
    import numpy as np
    from mitoprobe.store import Store, StoreLockedError

    st = Store(sys.argv[1])
    ids = st.patches(columns=["patch_id"])["patch_id"].tolist()
    try:
        w = st.features.writer("race", "toy", {"cls": 4}, {"run": {"views": ["none"]}})
    except StoreLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for i in range(0, len(ids), 4):
        w.write_chunk(ids[i:i + 4], ["none"] * len(ids[i:i + 4]), {"cls": np.ones((len(ids[i:i + 4]), 4), np.float32)})
        time.sleep(0.02)
    w.finalize(expected_rows=len(ids))
""")


def test_two_jobs_at_once(tiny_store):
    """Two processes start the same set at once (the issue's 13,146 rows for 6,573 keys): whichever
    loses the lock exits 2 naming the holder (or, started after the winner finished, has nothing to
    do); one row per key either way."""
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tiny_store.root)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) in ([0, 0], [0, 2]), results
    for code, _, err in results:
        assert code == 0 or "is being written by pid" in err, err
    keys, _ = tiny_store.features.read("toy", "race")
    assert len(keys) == len(tiny_store.patches()) and not keys.duplicated().any()
    assert integrity.check(tiny_store) == []


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_store, caplog):
    """A job killed without cleanup (os._exit) leaves its lock record: the OS dropped the lock, so
    the next writer takes it over, says so, and resumes the killed job's rows."""
    script = textwrap.dedent(f"""
        import os
        import numpy as np
        from mitoprobe.store import Store
        st = Store({str(tiny_store.root)!r})
        ids = st.patches(columns=["patch_id"])["patch_id"].tolist()[:5]
        w = st.features.writer("r1", "toy", {{"cls": 4}}, {{}})
        w.write_chunk(ids, ["none"] * 5, {{"cls": np.ones((5, 4), np.float32)}})
        print(os.getpid())
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    dead = int(proc.stdout)
    lock = tiny_store.features.lock("r1")
    assert lock.record()["pid"] == dead and lock.held_elsewhere() is None
    with caplog.at_level(logging.WARNING):
        w = tiny_store.features.writer("r1", "toy", {"cls": 4}, {})
    assert not w.closed and lock.record()["pid"] == os.getpid()
    assert any(f"pid {dead}" in r.getMessage() and "no longer running" in r.getMessage() for r in caplog.records)
    assert len(w.done_keys()) == 5  # the dead job's committed chunk is kept
    w.close()
    assert lock.record() is None  # a clean release leaves no record


def test_stale_record_with_a_dead_pid(tiny_store, caplog):
    lock = tiny_store.features.lock("r2")
    lock.record_path.parent.mkdir(parents=True, exist_ok=True)  # the import's patches lock made it
    dead = _dead_pid()
    lock.record_path.write_text(json.dumps(dict(pid=dead, host=socket.gethostname(), command="mitoprobe embed",
                                                started="2026-01-01T00:00:00+00:00")))
    with caplog.at_level(logging.WARNING):
        with tiny_store.features.writer("r2", "toy", {"cls": 4}, {}) as w:
            assert not w.closed
    assert any(f"pid {dead}" in r.getMessage() for r in caplog.records)
    assert w.closed and lock.record() is None


def test_finalized_writer_is_closed(tiny_store):
    ids = tiny_store.patches()["patch_id"].tolist()[:3]
    w = tiny_store.features.writer("r3", "toy", {"cls": 4}, {})
    w.write_chunk(ids, ["none"] * 3, {"cls": np.ones((3, 4), np.float32)})
    w.finalize()
    with pytest.raises(StoreError, match="closed"):
        w.write_chunk(ids, ["none"] * 3, {"cls": np.ones((3, 4), np.float32)})
    # The lock is free again: another process could take it now.
    assert tiny_store.features.lock("r3").held_elsewhere() is None


# -- mitoprobe sql: read-only -------------------------------------------------------------------------
def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("query, kind", [
    ("copy (select * from patches) to '{out}'", "COPY"),
    ("copy patches to '{store}/x.csv'", "COPY"),
    ("create table t as select 1", "CREATE"),
    ("attach '{out}.duckdb' as x", "ATTACH"),
    ("insert into patches select * from patches", "INSERT"),
    ("set threads = 1", "SET"),
    ("select 1; copy (select 1) to '{out}'", "COPY"),
    ("explain analyze copy (select 1) to '{out}'", "EXPLAIN COPY"),
    ("export database '{out}'", "EXPORT"),
    ("install httpfs", "LOAD"),
    ("pragma version", "PRAGMA"),
    ("call pragma_version()", "CALL"),
])
def test_sql_refuses_writes(tiny_store, tmp_path, monkeypatch, capsys, query, kind):
    out = tmp_path / "leak.csv"
    before = _files(tiny_store.root)
    code, text = run_cli(monkeypatch, capsys, "sql", query.format(out=out, store=tiny_store.root),
                         "--store", str(tiny_store.root))
    assert code == 2 and "Traceback" not in text, text
    assert f"refusing {kind}" in text and "read-only" in text
    assert not out.exists() and not Path(f"{out}.duckdb").exists()
    assert _files(tiny_store.root) == before


@pytest.mark.parametrize("query", ["select count(*) n from patches", "describe patches", "show tables",
                                   "summarize select y from patches", "explain select * from patches",
                                   "explain analyze select count(*) from patches", "from patches limit 1",
                                   "with t as (select 1 a) select * from t", "select 1; select 2"])
def test_sql_allows_queries(tiny_store, monkeypatch, capsys, query):
    code, text = run_cli(monkeypatch, capsys, "sql", query, "--store", str(tiny_store.root))
    assert code == 0, text


def test_sql_cannot_reach_files_outside_the_store(tiny_store, tmp_path, monkeypatch, capsys):
    outside = tmp_path / "outside.csv"
    outside.write_text("a\n1\n")
    code, text = run_cli(monkeypatch, capsys, "sql", f"select * from read_csv('{outside}')",
                         "--store", str(tiny_store.root))
    assert code == 2 and "Permission Error" in text, text
    assert tiny_store.sql(f"select count(*) n from read_parquet('{tiny_store.patches_path.resolve()}')")["n"][0] == 36


# -- import over a populated store --------------------------------------------------------------------
def test_import_that_drops_patches_is_refused(tiny_store, tmp_path):
    smaller = make_benchmark(tmp_path / "smaller", n_per_class=2, seed=5)
    before = _files(tiny_store.root)
    with pytest.raises(StoreError, match=r"would drop 36 and change 0 of the 36 stored patches.*--replace"):
        tiny_store.import_dataset(smaller, smaller / "AMI-BR.csv")
    assert _files(tiny_store.root) == before
    out = tiny_store.import_dataset(smaller, smaller / "AMI-BR.csv", replace=True)
    assert out.changed and len(tiny_store.patches()) == 12


def test_import_that_changes_a_row_is_refused(tiny_store, tiny_benchmark, tmp_path):
    other = shutil.copytree(tiny_benchmark, tmp_path / "changed")
    csv = pd.read_csv(other / "AMI-BR.csv", index_col=0)
    csv.loc[csv.index[1], "expert3_atypical"] = not csv.loc[csv.index[1], "expert3_atypical"]
    csv.to_csv(other / "AMI-BR.csv")
    before = _files(tiny_store.root)
    with pytest.raises(StoreError, match=r"would drop 0 and change 1 of the 36"):
        tiny_store.import_dataset(other, other / "AMI-BR.csv")
    assert _files(tiny_store.root) == before


def test_import_that_only_adds_patches_is_allowed(tiny_store, tiny_benchmark, tmp_path):
    more = shutil.copytree(tiny_benchmark, tmp_path / "more")
    rgb = np.random.default_rng(99).integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
    (more / "AtNorM-Br" / "Normal" / "999.png").write_bytes(png_bytes(rgb))
    old = tiny_store.patches()
    out = tiny_store.import_dataset(more, more / "AMI-BR.csv")
    assert out.changed and len(tiny_store.patches()) == len(old) + 1
    assert not tiny_store.import_dataset(more, more / "AMI-BR.csv").changed  # identical: a no-op


def test_two_embed_commands_at_once(tiny_store):
    """The issue's case end to end: two `mitoprobe embed` jobs on the same set started together end with
    exactly one row per key (the loser exits 2 naming the holder, or finds nothing left to do)."""
    cmd = [sys.executable, "-m", "mitoprobe", "embed", "--model", "handcrafted", "--num-workers", "0",
           "--store", str(tiny_store.root)]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert sorted(r[0] for r in results) in ([0, 0], [0, 2]), results
    for code, _, err in results:
        assert code == 0 or ("is being written by pid" in err and "Traceback" not in err), err
    from mitoprobe import embedder

    keys, _ = tiny_store.features.read("handcrafted", embedder.recipe_id_of("handcrafted"))
    assert len(keys) == len(tiny_store.patches()) and not keys.duplicated().any()
    assert integrity.check(tiny_store) == []
