"""Late fusion from stored predictions: fold k with fold k, thresholds and stacker weights from training
data only (a test-label permutation changes no choice), written as a family of its own, and the held-out
ranking that names the best family."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from classifiers_synth import synthetic_store

from mitoprobe.classifiers import fusion as F
from mitoprobe.classifiers import metrics as M
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.classifiers.runner import sweep
from mitoprobe.classifiers.scoring import decision_threshold
from mitoprobe.store.errors import ProtocolError

HEADS = ["logreg", "knn"]


@pytest.fixture()
def probed(tmp_path):
    st = synthetic_store(tmp_path / "st", signal=1.0)
    sweep(st, "synth", heads=HEADS, n_boot=10, show_progress=False)
    return st


def _stored(st, fam_id):
    runs = st.results.read("runs")
    mine = runs[runs["family_id"] == fam_id]
    preds = st.results.read("predictions")
    return mine, preds[preds["run_id"].isin(set(mine["run_id"]))]


def test_mean_fusion_averages_fold_k_with_fold_k_and_thresholds_on_heldout(probed):
    st = probed
    rows = F.fuse(st, ["synth:logreg", "synth:knn"], n_boot=10)
    fam = rows["family_id"].iloc[0]
    assert set(rows["family"]) == {"fusion"} and set(rows["head"]) == {"mean"} and set(rows["fold"]) == {-1, 0, 1, 2, 3, 4}
    conf = json.loads(rows["config_json"].iloc[0])
    assert [m["label"] for m in conf["members"]] == ["synth:logreg", "synth:knn"]
    assert json.loads(rows["options"].iloc[0])["members"] == ["synth:logreg", "synth:knn"]
    runs, preds = st.results.read("runs"), st.results.read("predictions")
    proto = load_protocol(st)
    mine, fused_preds = _stored(st, fam)
    for k in range(5):
        member_p = []
        for head in HEADS:
            rid = runs[(runs["model"] == "synth") & (runs["head"] == head) & (runs["fold"] == k)]["run_id"].iloc[0]
            p = preds[(preds["run_id"] == rid)]
            member_p.append(p.set_index(["split", "test_set", "patch_id"])["probability"])
        expected = (member_p[0] + member_p[1]) / 2
        got = fused_preds[fused_preds["fold"] == k].set_index(["split", "test_set", "patch_id"])["probability"]
        np.testing.assert_allclose(got.sort_index().to_numpy(), expected.reindex(got.sort_index().index).to_numpy())
        val = fused_preds[(fused_preds["fold"] == k) & (fused_preds["split"] == "val")]
        y = proto.train.set_index("patch_id")["y"].reindex(val["patch_id"]).to_numpy()
        thr = mine.loc[mine["fold"] == k, "threshold"].iloc[0]
        assert thr == pytest.approx(decision_threshold("val_youden", y, val["probability"].to_numpy()))
    oof = fused_preds[(fused_preds["fold"] == -1) & (fused_preds["split"] == "val")]
    assert len(oof) == len(proto.train)
    y = proto.train.set_index("patch_id")["y"].reindex(oof["patch_id"]).to_numpy()
    assert mine.loc[mine["fold"] == -1, "threshold"].iloc[0] == pytest.approx(M.best_threshold(y, oof["probability"]))
    assert F.fuse(st, ["synth:logreg", "synth:knn"], n_boot=10) is None  # the same fusion is not stored twice


def test_stacker_fold_k_never_sees_fold_k_labels(probed):
    st = probed
    proto = load_protocol(st)
    runs, preds = st.results.read("runs"), st.results.read("predictions")
    members = [F.resolve_member(runs, s) for s in ("synth:logreg", "synth:knn")]
    probas = [F.member_proba(preds, F._fold_runs(runs, m, 5), proto, m.label) for m in members]
    a = F.fuse_probabilities(probas, proto, "stack")
    y = proto.train["y"].to_numpy().copy()
    held0 = proto.train["fold"].to_numpy() == 0
    y[held0] = 1 - y[held0]  # fold 0's held-out labels flipped
    b = F.fuse_probabilities(probas, replace(proto, train=proto.train.assign(y=y)), "stack")
    assert a.weights[0] == b.weights[0]  # fold 0's stacker: fitted on the other folds only
    assert a.weights[1] != b.weights[1]  # fold 1's stacker does use fold 0's (out-of-fold) labels
    for name in proto.tests:
        np.testing.assert_array_equal(a.test[0][name], b.test[0][name])
    assert len(a.weights[0]) == 3  # bias + one weight per member


def test_no_fusion_choice_reads_a_test_label(probed, tmp_path, monkeypatch):
    """Permute every test label: fused probabilities, thresholds, stacker weights and the held-out ranking
    stay identical, while the test metrics move (the labels really changed)."""
    import shutil

    from mitoprobe.store import Store

    real = F.load_protocol

    def fused(st, poison):
        def load(store, *args, **kwargs):
            proto = real(store, *args, **kwargs)
            if not poison:
                return proto
            rng = np.random.default_rng(0)
            return replace(proto, tests={n: replace(ts, y=rng.permutation(ts.y)) for n, ts in proto.tests.items()})

        monkeypatch.setattr(F, "load_protocol", load)
        for rule in ("mean", "stack"):
            F.fuse(st, ["synth:logreg", "synth:knn"], rule=rule, n_boot=10)
        runs = st.results.read("runs")
        fus = runs[runs["family"] == "fusion"].sort_values(["head", "fold", "test_set"])
        preds = st.results.read("predictions")
        p = preds[preds["run_id"].isin(set(fus["run_id"]))].sort_values(["run_id", "split", "test_set", "patch_id"])
        weights = [json.loads(c).get("weights") for c in fus["config_json"]]
        return fus, p, weights, F.rank_by_heldout(runs)

    a = fused(Store(shutil.copytree(probed.root, tmp_path / "clean")), False)
    b = fused(Store(shutil.copytree(probed.root, tmp_path / "poisoned")), True)
    np.testing.assert_array_equal(a[0]["threshold"].to_numpy(), b[0]["threshold"].to_numpy())
    np.testing.assert_array_equal(a[1]["probability"].to_numpy(), b[1]["probability"].to_numpy())
    assert a[2] == b[2] and any(w for w in a[2])
    assert a[3][["model", "head", "heldout_auroc"]].equals(b[3][["model", "head", "heldout_auroc"]])
    assert not np.allclose(a[0]["balanced_accuracy"].to_numpy(), b[0]["balanced_accuracy"].to_numpy())


def test_rank_by_heldout_orders_by_heldout_auroc_and_skips_incomplete(probed):
    st = probed
    F.fuse(st, ["synth:logreg", "synth:knn"], n_boot=10)
    runs = st.results.read("runs")
    ranked = F.rank_by_heldout(runs)
    assert set(ranked["model"]) == {"synth", "fusion(synth:logreg, synth:knn)"} and len(ranked) == 3
    assert ranked["heldout_auroc"].is_monotonic_decreasing
    fam = ranked["family_ids"].iloc[0]
    expected = runs[(runs["family_id"] == fam) & (runs["fold"] >= 0)].drop_duplicates("fold")["val_auroc"].mean()
    assert ranked["heldout_auroc"].iloc[0] == pytest.approx(expected)
    partial = runs[~((runs["family_id"] == fam) & (runs["fold"] == 2))]
    assert fam not in set(F.rank_by_heldout(partial)["family_ids"])


def test_fusion_refuses_what_it_cannot_fuse(probed):
    st = probed
    with pytest.raises(ProtocolError, match="at least two"):
        F.fuse(st, ["synth:logreg", "synth:logreg"])
    with pytest.raises(ProtocolError, match="no runs"):
        F.fuse(st, ["synth:logreg", "nope:lgbm"])
    with pytest.raises(ProtocolError, match="unknown fusion rule"):
        F.fuse(st, ["synth:logreg", "synth:knn"], rule="max")
