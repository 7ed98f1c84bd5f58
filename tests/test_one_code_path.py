"""One library under every entry point: ``mitoprobe probe`` (the CLI), ``mitoprobe run`` (the main job) and
``Workspace.probe`` (the Python API) on the same data store the same rows, run ids and probabilities."""

from __future__ import annotations

import pandas as pd

import mitoprobe
from conftest import run_cli
from mitoprobe.store import Store
from mitoprobe.store.example_benchmark import write_example_benchmark

HEADS = "logreg,simpleshot"
VOLATILE = ["created_at", "fit_seconds", "predict_seconds"]  # wall clock: the only columns allowed to differ


def _results(root) -> tuple[pd.DataFrame, pd.DataFrame]:
    st = Store(root)
    runs = st.results.read("runs").drop(columns=VOLATILE).sort_values(["run_id", "test_set"]).reset_index(drop=True)
    preds = st.results.read("predictions").sort_values(["run_id", "split", "patch_id"]).reset_index(drop=True)
    return runs, preds


def test_the_cli_the_main_job_and_the_api_store_identical_rows(tmp_path, monkeypatch, capsys):
    bench = write_example_benchmark(tmp_path / "bench", n_per_class=10, train_slides=6)
    by_commands, by_main_job, by_api = tmp_path / "commands", tmp_path / "main-job", tmp_path / "api"
    for args in (["data", "import", str(bench)], ["embed", "--model", "handcrafted"],
                 ["probe", "--model", "handcrafted", "--head", HEADS]):
        code, out = run_cli(monkeypatch, capsys, *args, "--store", str(by_commands))
        assert code == 0, out
    code, out = run_cli(monkeypatch, capsys, "run", "--data", str(bench), "--model", "handcrafted", "--head", HEADS,
                        "--format", "csv", "--store", str(by_main_job))
    assert code == 0, out
    with mitoprobe.open(by_api, create=True) as ws:
        ws.import_benchmark(bench)
        ws.embed("handcrafted")
        ws.probe("handcrafted", HEADS.split(","))

    runs, preds = _results(by_commands)
    assert runs["family_id"].nunique() == 2 and len(preds)
    for other in (by_main_job, by_api):
        other_runs, other_preds = _results(other)
        pd.testing.assert_frame_equal(runs, other_runs)  # same family ids, run ids, thresholds, metrics
        pd.testing.assert_frame_equal(preds, other_preds)  # same probabilities, patch by patch
