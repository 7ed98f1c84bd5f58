"""Result rows stay exact under concurrency (issue 21): one writer per family, and result rows stored
twice are found by ``store check`` and moved out by ``store repair``.

The policy: a job that finds another live job writing the same family waits for it (bounded by
``MITOPROBE_LOCK_WAIT``, saying whom it waits for), then finds its rows and skips the family; when the
wait runs out it exits 2 naming the holder. Two probes started together therefore append each run once.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_six_slide_store, run_cli

from mitoprobe import embedder
from mitoprobe.classifiers import runs as R
from mitoprobe.classifiers.report import leaderboard
from mitoprobe.store import Store, integrity

REPO = Path(__file__).resolve().parents[1]
MODEL = "handcrafted"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """A six-slide store with the handcrafted set embedded and no results (copied by each test)."""
    st = make_six_slide_store(tmp_path_factory.mktemp("concurrency"))
    embedder.embed(st, MODEL, progress=False, num_workers=0)
    return st.root


@pytest.fixture
def store(embedded, tmp_path) -> Store:
    return Store(shutil.copytree(embedded, tmp_path / "store"))


def _probe_cmd(root: Path, heads: str) -> list[str]:
    return [sys.executable, "-m", "mitoprobe", "probe", "--model", MODEL, "--head", heads, "--store", str(root)]


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _keys_once(st: Store) -> pd.DataFrame:
    runs = st.results.read("runs")
    assert not runs.duplicated(["run_id", "test_set"]).any()
    preds = st.results.read("predictions")
    assert not preds.duplicated(["run_id", "test_set", "split", "patch_id"]).any()
    return runs


def test_two_probes_of_the_same_new_family_at_once(store):
    """The issue's case end to end: two `mitoprobe probe` of the same new families started together
    (measured before the lock: 18 duplicated run keys per family). Each run key lands exactly once."""
    procs = [subprocess.Popen(_probe_cmd(store.root, "logreg,knn"), cwd=REPO, env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0 and "Traceback" not in err, (out, err)
    runs = _keys_once(store)
    # 2 families x (5 folds + the fold ensemble) x 3 test sets, each appended by one of the two jobs
    assert runs.groupby("family_id").size().tolist() == [18, 18]
    assert integrity.check(store) == []


def test_second_writer_waits_for_the_holder_then_times_out_naming_it(store, tmp_path, monkeypatch, capsys):
    """Deterministic: this test holds a family's lock. A probe of that family with a short wait exits 2
    naming this process; one with a longer wait says whom it waits for, then runs when the lock is free."""
    other = Store(shutil.copytree(store.root, tmp_path / "other"))
    code, out = run_cli(monkeypatch, capsys, "probe", "--model", MODEL, "--head", "logreg", "--store", str(other.root))
    assert code == 0, out
    fam = other.results.read("runs")["family_id"].iloc[0]  # the family id does not depend on the store's path

    with R.family_lock(store, fam, "held by the test"):
        quick = subprocess.run(_probe_cmd(store.root, "logreg"), cwd=REPO, env=_env(MITOPROBE_LOCK_WAIT="0.5"),
                               capture_output=True, text=True, timeout=300)
        assert quick.returncode == 2 and "Traceback" not in quick.stderr, quick.stderr
        assert f"is being written by pid {os.getpid()} on host {socket.gethostname()}" in quick.stderr
        assert "(waited 0.5 s)" in quick.stderr and f"family-{fam}.lock" in quick.stderr
        assert not store.results.parts("runs")  # nothing written

        log = tmp_path / "waiter.log"
        with open(log, "w") as fh:
            waiter = subprocess.Popen(_probe_cmd(store.root, "logreg"), cwd=REPO, env=_env(MITOPROBE_LOCK_WAIT="120"),
                                      stdout=fh, stderr=subprocess.STDOUT, text=True)
        try:
            t0 = time.time()
            while "waiting for it" not in log.read_text():
                assert waiter.poll() is None, log.read_text()
                assert time.time() - t0 < 120, log.read_text()
                time.sleep(0.05)
            assert f"pid {os.getpid()}" in log.read_text()
            assert not store.results.parts("runs")  # still waiting
        except BaseException:
            waiter.kill()
            raise
    assert waiter.wait(timeout=300) == 0, log.read_text()
    assert _keys_once(store)["family_id"].unique().tolist() == [fam]
    assert not (store.root / "locks" / f"family-{fam}.json").exists()  # the holder's record is cleaned up


def _report(st: Store) -> pd.DataFrame:
    df = leaderboard(st, model=MODEL, with_paper=False)
    return df.select_dtypes("number").sort_index(axis=1).reset_index(drop=True)


def test_check_lists_duplicated_result_rows_and_repair_moves_them_out(store, monkeypatch, capsys):
    code, out = run_cli(monkeypatch, capsys, "probe", "--model", MODEL, "--head", "logreg,knn",
                        "--store", str(store.root))
    assert code == 0, out
    clean_runs = store.results.read("runs")
    clean_report = _report(store)
    originals = {p: p.read_bytes() for t in ("runs", "predictions") for p in store.results.parts(t)}

    # What two writers leave: a whole second copy of one family's runs (other timestamps) ...
    runs_part = store.results.parts("runs")[0]
    t = pq.read_table(runs_part).to_pandas()
    t["created_at"] = t["created_at"] + pd.Timedelta(seconds=1)
    store.results.append("runs", t)
    # ... and a predictions part mixing copies of stored rows with new rows (which must stay).
    preds = pq.read_table(store.results.parts("predictions")[0]).to_pandas()
    extra = preds.head(3).assign(run_id="not-a-copy")
    store.results.append("predictions", pd.concat([preds.head(40), extra], ignore_index=True))
    time.sleep(0.01)
    dup_runs = [p for p in store.results.parts("runs") if p not in originals]
    dup_preds = [p for p in store.results.parts("predictions") if p not in originals]
    assert len(dup_runs) == len(dup_preds) == 1

    problems = integrity.check(store)
    assert sorted((p.kind, p.path) for p in problems) == sorted([("duplicates", dup_runs[0]),
                                                                 ("duplicates", dup_preds[0])])
    code, out = run_cli(monkeypatch, capsys, "store", "check", "--store", str(store.root))
    assert code == 2 and "Traceback" not in out, out
    assert f"{len(t)} runs rows already stored (same run_id + test_set" in out
    assert "40 predictions rows already stored" in out and "store repair" in out

    before = {p: p.read_bytes() for p in store.results.dir.rglob("*.parquet")}
    code, out = run_cli(monkeypatch, capsys, "store", "repair", "--store", str(store.root))  # dry run
    assert code == 0 and "would quarantine" in out and "would rewrite part" in out, out
    assert {p: p.read_bytes() for p in store.results.dir.rglob("*.parquet")} == before

    code, out = run_cli(monkeypatch, capsys, "store", "repair", "--yes", "--store", str(store.root))
    assert code == 0, out
    assert integrity.check(store) == []
    # Only the parts holding copies were touched; the originals are byte-identical.
    assert {p: p.read_bytes() for p in originals} == originals
    quarantined = sorted((store.root / integrity.QUARANTINE_DIR).rglob("*.parquet"))
    assert sorted(q.name for q in quarantined) == sorted([dup_runs[0].name, dup_preds[0].name])
    assert sum(pq.ParquetFile(q).metadata.num_rows for q in quarantined) == len(t) + 43  # nothing deleted
    # One copy of each row stays, the new rows too; the figures are the de-duplicated ones.
    runs = _keys_once(store)
    pd.testing.assert_frame_equal(runs.sort_values(["run_id", "test_set"]).reset_index(drop=True),
                                  clean_runs.sort_values(["run_id", "test_set"]).reset_index(drop=True))
    assert (store.results.read("predictions")["run_id"] == "not-a-copy").sum() == 3
    pd.testing.assert_frame_equal(_report(store), clean_report)
    np.testing.assert_equal(len(store.results.read("predictions")),
                            sum(pq.ParquetFile(p).metadata.num_rows for p in originals if "predictions" in str(p)) + 3)
