"""A user's cohort under the protocol: an extra test set, predictions and nearest labelled mitoses."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mitoprobe.classifiers.neighbours import search
from mitoprobe.classifiers.predict import predict_dataset
from mitoprobe.classifiers.protocol import TEST_SETS, available_test_sets, load_protocol
from mitoprobe.classifiers.refit import refit_family
from mitoprobe.classifiers.runner import sweep
from conftest import make_six_slide_store
from mitoprobe.embedder import embed
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.errors import ProtocolError, StoreError

HEADS = ["logreg", "knn"]


@pytest.fixture
def benchmark_store(tmp_path):
    """Six-slide benchmark store, embedded with handcrafted and probed before any cohort exists."""
    st = make_six_slide_store(tmp_path / "six")
    embed(st, "handcrafted", progress=False)
    sweep(st, "handcrafted", heads=HEADS, n_boot=20, show_progress=False)
    return st


def add_cohort(st, tmp_path, name="MyLab"):
    st.import_cohort(name, manifest=write_example_cohort(tmp_path / "cohort"))
    embed(st, "handcrafted", progress=False)


def test_a_labelled_cohort_test_split_is_an_extra_test_set_and_unlabelled_patches_are_not_scored(benchmark_store,
                                                                                                  tmp_path):
    add_cohort(benchmark_store, tmp_path)
    known = available_test_sets(benchmark_store.patches())
    assert list(known)[:3] == list(TEST_SETS) and known["MyLab"] == ("MyLab", "test")
    ts = load_protocol(benchmark_store).tests["MyLab"]
    assert len(ts.patch_ids) == 16  # 20 patches, 4 unlabelled


def test_a_family_run_before_the_cohort_scores_it_with_its_own_fold_models(benchmark_store, tmp_path):
    st = benchmark_store
    runs0 = st.results.read("runs")
    fams = sorted(runs0["family_id"].unique())
    add_cohort(st, tmp_path)
    new = sweep(st, "handcrafted", heads=HEADS, n_boot=20, show_progress=False)
    assert set(new["test_set"]) == {"MyLab"}  # only the new test set: nothing re-run
    runs = st.results.read("runs")
    assert sorted(runs["family_id"].unique()) == fams  # the same families, no new ids
    for fam in fams:
        mine = runs[runs["family_id"] == fam]
        assert sorted(mine.loc[mine["test_set"] == "MyLab", "fold"]) == [-1, 0, 1, 2, 3, 4]
        # MyLab rows reuse the family's run ids and thresholds
        by_run = mine.groupby("run_id")["threshold"].nunique()
        assert (by_run == 1).all()
    # benchmark rows are untouched
    pd.testing.assert_frame_equal(runs0.sort_values(["run_id", "test_set"]).reset_index(drop=True),
                                  runs[runs["test_set"] != "MyLab"].sort_values(["run_id", "test_set"])
                                  .reset_index(drop=True), check_like=True)
    # a second probe changes nothing
    assert sweep(st, "handcrafted", heads=HEADS, n_boot=20, show_progress=False).empty


def test_the_ensemble_of_the_extension_equals_a_fresh_run_on_the_same_store(benchmark_store, tmp_path):
    """Scoring the cohort later gives exactly what probing with the cohort present gives."""
    st = benchmark_store
    add_cohort(st, tmp_path)
    sweep(st, "handcrafted", heads=["logreg"], n_boot=20, show_progress=False)
    preds = st.results.read("predictions")
    later = preds[(preds["test_set"] == "MyLab")].sort_values(["fold", "patch_id"])
    fresh = sweep(st, "handcrafted", heads=["logreg"], n_boot=20, show_progress=False, repeat=True)
    assert "MyLab" in set(fresh["test_set"])
    preds2 = st.results.read("predictions")
    rid = set(fresh["run_id"])
    again = preds2[preds2["run_id"].isin(rid) & (preds2["test_set"] == "MyLab")].sort_values(["fold", "patch_id"])
    # repeat 1 has another seed, but logreg is deterministic: the same probabilities
    np.testing.assert_allclose(later["probability"].to_numpy(), again["probability"].to_numpy(), atol=1e-9)


def test_refit_is_checked_against_the_stored_heldout_probabilities(benchmark_store):
    st = benchmark_store
    runs = st.results.read("runs")
    fam = runs.loc[runs["head"] == "logreg", "family_id"].iloc[0]
    fitted = refit_family(st, fam)
    assert [f.fold for f in fitted.folds] == [0, 1, 2, 3, 4] and fitted.ensemble_threshold is not None
    # tamper with one stored held-out probability: the refit no longer reproduces the run and says so
    rid = fitted.folds[0].run_id
    part = next(p for p in st.results.parts("predictions") if (pd.read_parquet(p)["run_id"] == rid).any())
    df = pd.read_parquet(part)
    i = df.index[(df["split"] == "val") & (df["run_id"] == fitted.folds[0].run_id)][0]
    df.loc[i, "probability"] += 0.1
    df.to_parquet(part)
    with pytest.raises(StoreError, match="does not reproduce the recorded model"):
        refit_family(st, fam)


def test_predict_gives_one_row_per_patch_with_probabilities_and_the_family_threshold(benchmark_store, tmp_path):
    st = benchmark_store
    add_cohort(st, tmp_path)
    out = predict_dataset(st, "handcrafted", "logreg", "MyLab")
    assert len(out) == 20 and out["patch_id"].is_unique
    assert out["p_atypical"].between(0, 1).all()
    folds = out[[f"p_fold{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(out["p_atypical"], folds.mean(axis=1))
    runs = st.results.read("runs")
    fam = out["family_id"].iloc[0]
    ens_thr = runs.loc[(runs["family_id"] == fam) & (runs["fold"] == -1), "threshold"].iloc[0]
    assert (out["threshold"] == ens_thr).all()
    assert ((out["p_atypical"] >= ens_thr) == (out["prediction"] == "Atypical")).all()
    assert out["label"].isna().sum() == 4
    assert json.loads(out["options"].iloc[0])["pooling"] == "all"
    # the labelled cohort patches: predictions agree with the stored test predictions of the ensemble
    preds = st.results.read("predictions")
    sweep(st, "handcrafted", heads=["logreg"], n_boot=20, show_progress=False)
    preds = st.results.read("predictions")
    stored = preds[(preds["test_set"] == "MyLab") & (preds["fold"] == -1) & preds["run_id"].isin(
        runs.loc[runs["family_id"] == fam, "run_id"])].set_index("patch_id")["probability"]
    got = out.set_index("patch_id").loc[stored.index, "p_atypical"]
    np.testing.assert_allclose(got.to_numpy(), stored.to_numpy(), atol=1e-9)


def test_predict_refuses_what_it_cannot_answer(benchmark_store):
    with pytest.raises(StoreError, match="no patches of dataset 'Nope'"):
        predict_dataset(benchmark_store, "handcrafted", "logreg", "Nope")
    with pytest.raises(StoreError, match="no probe family of handcrafted with head mlp"):
        predict_dataset(benchmark_store, "handcrafted", "mlp", "AtNorM-MD")


def test_search_gives_k_labelled_reference_neighbours_per_patch(benchmark_store, tmp_path):
    st = benchmark_store
    add_cohort(st, tmp_path)
    wide = search(st, "handcrafted", "MyLab", k=3, long=False)
    assert len(wide) == 20 and wide["patch_id"].is_unique
    assert (wide["n_neighbours"] == 3).all()
    assert set(wide["nn1_dataset"]) == {"AMi-Br"}
    assert wide[["nn1_distance", "nn2_distance", "nn3_distance"]].apply(np.diff, axis=1).map(
        lambda d: (d >= -1e-6).all()).all()
    assert wide["share_atypical"].between(0, 1).all()
    # AMi-Br queries, excluding their own slide: no neighbour from it, and never the patch itself
    amibr = st.patches()
    amibr = amibr[amibr["dataset"] == "AMi-Br"].set_index("patch_id")
    long = search(st, "handcrafted", "AMi-Br", k=4, exclude_same_slide=True, long=True)
    assert (long["query_patch_id"] != long["patch_id"]).all()
    assert (amibr.loc[long["query_patch_id"], "slide"].to_numpy() != long["slide"].to_numpy()).all()
    assert long.groupby("query_patch_id").size().eq(4).all()
    # excluding the query's dataset when the reference is that dataset leaves nothing to return
    none = search(st, "handcrafted", "AMi-Br", k=2, exclude_same_dataset=True, long=True)
    assert none.empty


def test_training_on_a_cohort_is_a_named_protocol_option(benchmark_store, tmp_path):
    st = benchmark_store
    m = write_example_cohort(tmp_path / "c")
    df = pd.read_csv(m, keep_default_na=False)
    df["split"] = "train"
    df["slide"] = [f"s{i % 6}" for i in range(len(df))]
    df.to_csv(m, index=False)
    st.import_cohort("LabTrain", manifest=m)
    embed(st, "handcrafted", progress=False)
    new = sweep(st, "handcrafted", heads=["logreg"], n_boot=20, show_progress=False, train_on="LabTrain")
    cfg = json.loads(new["config_json"].iloc[0])
    assert cfg["protocol"]["train_on"] == "LabTrain"
    assert new["n_train"].iloc[0] < 16  # 4 of 5 folds of its 16 labelled patches
    paper = st.results.read("runs")
    paper = paper[paper["head"] == "logreg"]
    assert new["family_id"].iloc[0] not in set(paper.loc[~paper["run_id"].isin(new["run_id"]), "family_id"])
    assert "train_on" not in json.loads(paper["config_json"].iloc[0])["protocol"]
    with pytest.raises(ProtocolError, match="no labelled train patches"):
        sweep(st, "handcrafted", heads=["logreg"], n_boot=20, show_progress=False, train_on="AtNorM-Br")


def test_batched_search_equals_one_prefiltered_search_per_patch(benchmark_store, tmp_path):
    """The over-fetching batch path is a shortcut only: every answer equals the exact prefiltered query."""
    st = benchmark_store
    add_cohort(st, tmp_path)
    long = search(st, "handcrafted", "AtNorM-Br", k=5, exclude_same_slide=True, long=True)
    eset = st.features.resolve("handcrafted", long["recipe_id"].iloc[0])
    keys, X = st.features.read("handcrafted", eset.recipe_id, views=["none"])
    row = dict(zip(keys["patch_id"], range(len(keys))))
    p = st.patches()
    ref = p.loc[(p["dataset"] == "AMi-Br") & p["label"].notna(), "patch_id"].tolist()
    for qid, got in long.groupby("query_patch_id"):
        exact = st.features.search(eset, X[row[qid]], k=5, among=ref)
        assert got.sort_values("rank")["patch_id"].tolist() == exact["patch_id"].tolist()
        np.testing.assert_allclose(got.sort_values("rank")["distance"], exact["distance"], atol=1e-6)
