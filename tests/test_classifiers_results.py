"""Results are data: the schema, append-only parts, skip-or-repeat, and the CLI over them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classifiers_synth import synthetic_store
from click.testing import CliRunner

from mitoprobe.classifiers.report import leaderboard
from mitoprobe.classifiers.runs import PREDICTION_COLUMNS, RUN_COLUMNS
from mitoprobe.classifiers.runner import sweep
from mitoprobe.cli import cli


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("synth-results"))


def _snapshot(store):
    return {p: p.read_bytes() for t in ("runs", "predictions") for p in store.results.parts(t)}


def test_schema_skip_repeat_and_append_only(synth):
    sweep(synth, "synth", heads=["simpleshot", "logreg"], n_boot=100, show_progress=False)
    runs = synth.results.read("runs")
    assert list(runs.columns) == RUN_COLUMNS
    assert len(runs) == 2 * 6 * 3  # heads x (5 folds + ensemble) x test sets
    assert sorted(runs["fold"].unique()) == [-1, 0, 1, 2, 3, 4]
    assert set(runs["test_set"]) == {"AMi-Br-test", "AtNorM-Br", "AtNorM-MD"}
    assert runs.groupby("head")["family_id"].nunique().eq(1).all()
    assert runs.groupby("run_id")["test_set"].nunique().eq(3).all()  # one run = 3 test-set rows
    cfg = json.loads(runs.loc[runs["head"] == "logreg", "config_json"].iloc[0])
    assert cfg["selected"]["C"] in (1e-4, 1e-3, 1e-2, 1e-1) and "held-out" in cfg["selection_rule"]
    # expert agreement only where experts voted (AMi-Br: 3, AtNorM-MD: 5, AtNorM-Br: none)
    k = runs[runs["fold"] == 0].set_index(["head", "test_set"])
    assert k.loc[("logreg", "AtNorM-MD"), "kappa_expert5"] == k.loc[("logreg", "AtNorM-MD"), "kappa_expert5"]
    assert np.isnan(k.loc[("logreg", "AMi-Br-test"), "kappa_expert4"])
    assert np.isnan(k.loc[("logreg", "AtNorM-Br"), "kappa_experts_mean"])
    assert (runs["balanced_accuracy_ci_low"] <= runs["balanced_accuracy"]).all()
    preds = synth.results.read("predictions")
    assert list(preds.columns) == PREDICTION_COLUMNS
    test_rows, val_rows = preds[preds["split"] == "test"], preds[preds["split"] == "val"]
    assert len(test_rows) == 2 * 6 * 3 * 120 and len(preds) == len(test_rows) + len(val_rows)
    assert set(preds["run_id"]) == set(runs["run_id"])
    # held-out rows: each fold model's held-out part, and the ensemble's out-of-fold probability of every
    # training patch (= the fold models' held-out probabilities, put together)
    folds = synth.read_folds().set_index("patch_id")["fold"]
    for head_runs in runs.groupby("head"):
        ids = set(head_runs[1]["run_id"])
        v = val_rows[val_rows["run_id"].isin(ids)]
        per_fold = v[v["fold"] >= 0]
        assert (per_fold["fold"].to_numpy() == folds.reindex(per_fold["patch_id"]).to_numpy()).all()
        oof = v[v["fold"] == -1].set_index("patch_id")["probability"]
        assert len(oof) == len(folds) and oof.index.is_unique
        np.testing.assert_allclose(oof.reindex(per_fold["patch_id"]).to_numpy(), per_fold["probability"].to_numpy())
    assert set(val_rows["test_set"]) == {"held-out"}

    before = _snapshot(synth)
    assert sweep(synth, "synth", heads=["simpleshot", "logreg"], n_boot=100, show_progress=False).empty  # skipped
    assert _snapshot(synth) == before

    again = sweep(synth, "synth", heads=["simpleshot"], n_boot=100, repeat=True, show_progress=False)
    assert set(again["repeat"]) == {1} and set(again["seed"]) == {1}
    after = _snapshot(synth)
    assert all(after[p] == b for p, b in before.items())  # old parts untouched
    assert len(after) == len(before) + 2
    runs2 = synth.results.read("runs")
    assert len(runs2) == len(runs) + 18 and runs2["run_id"].nunique() == runs["run_id"].nunique() + 6


def test_report_reads_back_the_out_of_fold_predictions(synth):
    """The leaderboard's held-out AUROC is recomputed from the stored out-of-fold rows; it equals the AUROC
    the runner recorded for the ensemble's threshold choice (runs.val_auroc at fold -1)."""
    from mitoprobe.classifiers.report import leaderboard

    sweep(synth, "synth", heads=["simpleshot"], n_boot=100, show_progress=False)  # its own runs (a no-op when stored)
    board = leaderboard(synth, with_paper=False)
    runs = synth.results.read("runs")
    ens = runs[runs["fold"] == -1].drop_duplicates("family_id").set_index("family_id")
    for _, row in board.iterrows():
        assert row["oof_auroc"] == pytest.approx(ens.loc[row["family_id"], "val_auroc"], abs=1e-12)
        assert row["oof_balanced_accuracy"] == pytest.approx(ens.loc[row["family_id"], "val_balanced_accuracy"],
                                                             abs=1e-12)


def test_leaderboard_and_cli(synth):
    sweep(synth, "synth", heads=["simpleshot"], n_boot=100, show_progress=False)
    board = leaderboard(synth)
    ours = board[board["source"] == "mitoprobe"]
    assert set(ours["test_set"]) == {"AMi-Br-test", "AtNorM-Br", "AtNorM-MD"}
    assert (ours["n_folds"] == 5).all() and ours["ensemble_auroc_ci_low"].notna().all()
    paper = board[board["source"] == "paper"]
    assert len(paper) == 21 and set(paper["family"]) == {"linear_probe"}  # 7 models x 3 test sets
    assert ours.groupby("test_set")["balanced_accuracy_mean"].max().notna().sum() == 3  # a best row per test set

    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--store", str(synth.root), "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "| AtNorM-MD" in res.output and "torch linear (paper)" in res.output and "Human reference" in res.output
    res = runner.invoke(cli, ["report", "--store", str(synth.root), "--format", "csv", "--no-paper"])
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("source,family,model,head")
    res = runner.invoke(cli, ["probe", "--store", str(synth.root), "--model", "synth", "--head", "knn"])
    assert res.exit_code == 0, res.output
    assert "new runs appended" in res.output
    res = runner.invoke(cli, ["probe", "--store", str(synth.root), "--model", "synth", "--head", "nope"])
    assert res.exit_code != 0


def test_main_job_with_a_stub_embedder(synth, monkeypatch):
    """`mitoprobe run` wires import -> embed -> probe -> report (embedding stubbed: the real
    embedder is tested in its own package)."""
    from mitoprobe import embedder

    from mitoprobe.main_job import run_main_job

    calls = []

    def fake_embed(store, model, views="none", **kw):
        calls.append((model, views))
        return embedder.EmbedSummary(name=model, recipe_id="x", rows_written=0, rows_total=0, seconds=0.0,
                                     patches_per_s=0.0)

    monkeypatch.setattr(embedder, "embed", fake_embed)
    views = []  # the derived views of what was embedded are made too (their own tests: test_derived_views.py)
    monkeypatch.setattr("mitoprobe.api.build_views", lambda store, recipe_id, **kw: views.append(recipe_id))
    timings = run_main_job(synth.root, models=("synth",), heads=["simpleshot"])
    assert calls == [("synth", "none")] and views == ["x"]
    assert set(timings) == {"import", "embed synth", "probe synth"}


def test_paired_comparison_of_two_families(synth):
    """``report --compare``: per test set, the difference of the two fold ensembles on the same patches,
    equal to the difference of their stored metrics, with a paired CI and Holm-adjusted p-values."""
    from mitoprobe.classifiers.significance import compare, resolve_families

    runs = synth.results.read("runs")
    fams = resolve_families(runs, ["synth:simpleshot", "synth:logreg"])
    table = compare(synth, fams, n_boot=200)
    assert set(table["test_set"]) == {"AMi-Br-test", "AtNorM-Br", "AtNorM-MD"} and len(table) == 6
    ens = runs[runs["fold"] == -1].set_index(["family_id", "test_set"])
    for _, r in table.iterrows():
        want = ens.loc[(r["family_a"], r["test_set"]), r["metric"]] - ens.loc[(r["family_b"], r["test_set"]), r["metric"]]
        assert r["diff"] == pytest.approx(want, abs=1e-12)
        assert r["ci_low"] <= r["diff"] <= r["ci_high"] and 0 < r["p"] <= r["p_holm"] <= 1
    res = CliRunner().invoke(cli, ["report", "--store", str(synth.root), "--compare", "synth:simpleshot",
                                   "--compare", "synth:logreg", "--format", "markdown"])
    assert res.exit_code == 0, res.output
    assert "p (Holm)" in res.output and "synth · simpleshot" in res.output
