"""Threshold rules (``classifiers.thresholds``): each fold's threshold from held-out probabilities only, the
pooled rules one threshold for every fold, and the transfer score that judges them never fitting a rule on
the slides it scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from classifiers_synth import synthetic_store
from click.testing import CliRunner

from mitoprobe.classifiers import fusion as F
from mitoprobe.classifiers import metrics as M
from mitoprobe.classifiers import thresholds as T
from mitoprobe.classifiers.labels import family_label
from mitoprobe.classifiers.runner import sweep
from mitoprobe.classifiers.scoring import decision_threshold
from mitoprobe.cli import cli
from mitoprobe.store.errors import ProtocolError


def _held_out(n_folds=5, n_slides=12, per_slide=20, seed=0):
    """Out-of-fold probabilities of 5 fold models, each with its own shift (miscalibrated differently)."""
    rng = np.random.default_rng(seed)
    n = n_folds * n_slides * per_slide
    folds = np.repeat(np.arange(n_folds), n_slides * per_slide)
    slides = np.array([f"f{f}s{i // per_slide}" for f, i in zip(folds, np.tile(np.arange(n_slides * per_slide), n_folds))])
    y = (rng.random(n) < 0.25).astype(int)
    shift = np.array([-0.6, -0.3, 0.0, 0.3, 0.6])[folds]
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + shift + rng.normal(0, 1.2, n))))
    return y, p, folds, slides


def test_prior_matched_calls_as_many_atypical_as_labelled():
    y = np.array([1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.05])
    t = T.prior_matched(y, p)
    assert t == pytest.approx(0.55) and (p > t).sum() == y.sum()
    assert T.prior_matched(np.zeros(3), p[:3]) == 0.5


def test_fold_thresholds_per_fold_and_pooled():
    y, p, folds, _ = _held_out()
    own = T.fold_thresholds("val_youden", y, p, folds)
    for k in range(5):  # the per-fold rule is the scoring module's, fold by fold
        assert own[k] == decision_threshold("val_youden", y[folds == k], p[folds == k])
    assert len(set(own.values())) == 5
    pooled = T.fold_thresholds("pooled_youden", y, p, folds)
    assert set(pooled.values()) == {M.best_threshold(y, p)}
    assert list(T.fold_thresholds("mean_youden", y, p, folds).values()) == pytest.approx([np.mean(list(own.values()))] * 5)
    assert set(T.fold_thresholds("prior_matched", y, p, folds).values()) == {T.prior_matched(y, p)}
    assert set(T.fold_thresholds("fixed_0.5", y, p, folds).values()) == {0.5}
    with pytest.raises(ProtocolError, match="unknown threshold rule"):
        T.fold_thresholds("test_youden", y, p, folds)
    with pytest.raises(ProtocolError, match="not a per-fold rule"):
        decision_threshold("pooled_youden", y, p)


def test_transfer_never_fits_a_rule_on_the_half_it_scores():
    y, p, folds, slides = _held_out()
    scores = T.transfer_scores(y, p, folds, slides, n_splits=3)
    assert set(scores["rule"]) == set(T.RULES) and set(scores["fold"]) == set(range(5))
    # one row by hand: fold 2, split 1, half 0
    own = folds == 2
    first = T.slide_halves(slides[own], np.random.default_rng([0, 2, 1]))
    assert 0 < first.sum() < own.sum() and len(set(slides[own][first]) & set(slides[own][~first])) == 0
    rest_y, rest_p = y[own][~first], p[own][~first]
    row = scores[(scores["fold"] == 2) & (scores["split"] == 1) & (scores["half"] == 0)].set_index("rule")
    assert row.at["val_youden", "threshold"] == M.best_threshold(rest_y, rest_p)
    pool_y = np.concatenate([rest_y, y[~own]])
    pool_p = np.concatenate([rest_p, p[~own]])
    assert row.at["pooled_youden", "threshold"] == M.best_threshold(pool_y, pool_p)
    assert row.at["prior_matched", "threshold"] == T.prior_matched(pool_y, pool_p)
    t = row.at["val_youden", "threshold"]
    assert row.at["val_youden", "balanced_accuracy"] == M.balanced_accuracy(y[own][first], M.predict(p[own][first], t))
    # the scored half's labels change no threshold
    y2 = y.copy()
    y2[np.flatnonzero(own)[first]] ^= 1
    again = T.transfer_scores(y2, p, folds, slides, n_splits=3)
    same = again[(again["fold"] == 2) & (again["split"] == 1) & (again["half"] == 0)].set_index("rule")
    assert same["threshold"].equals(row["threshold"])
    table = T.transfer_table(scores)
    assert list(table.columns) == ["transfer_balanced_accuracy", "mean_threshold", "fold_std"]
    assert table["transfer_balanced_accuracy"].is_monotonic_decreasing


@pytest.fixture()
def probed(tmp_path):
    st = synthetic_store(tmp_path / "st", signal=1.0)
    sweep(st, "synth", heads=["logreg", "knn"], n_boot=10, show_progress=False)
    return st


def test_a_fusion_under_a_pooled_rule_is_its_own_family_with_one_threshold(probed):
    st = probed
    default = F.fuse(st, ["synth:logreg", "synth:knn"], n_boot=10)
    pooled = F.fuse(st, ["synth:logreg", "synth:knn"], n_boot=10, threshold_rule="pooled_youden")
    assert default["family_id"].iloc[0] != pooled["family_id"].iloc[0]
    assert pooled["threshold_rule"].eq("pooled_youden").all()
    assert json.loads(pooled["config_json"].iloc[0])["threshold_rule"] == "pooled_youden"
    per_fold = pooled[pooled["fold"] >= 0]
    assert per_fold["threshold"].nunique() == 1  # one threshold for every fold, and the ensemble's is the same
    assert pooled.loc[pooled["fold"] == -1, "threshold"].iloc[0] == per_fold["threshold"].iloc[0]
    assert family_label(pooled.iloc[0]).startswith("fuse:mean@pooled_youden(")
    assert family_label(default.iloc[0]).startswith("fuse:mean(")
    # the held-out probabilities are the same: only the decision moved
    assert np.allclose(default.groupby("fold")["val_auroc"].first(), pooled.groupby("fold")["val_auroc"].first())
    with pytest.raises(ProtocolError, match="unknown threshold rule"):
        F.fuse(st, ["synth:logreg", "synth:knn"], threshold_rule="test_youden")


def test_fuse_cli_takes_a_threshold_rule(probed):
    res = CliRunner().invoke(cli, ["fuse", "--member", "synth:logreg", "--member", "synth:knn",
                                    "--threshold-rule", "prior_matched", "--store", str(probed.root)])
    assert res.exit_code == 0, res.output
    runs = probed.results.read("runs")
    assert set(runs.loc[runs["family"] == "fusion", "threshold_rule"]) == {"prior_matched"}
    bad = CliRunner().invoke(cli, ["fuse", "--member", "synth:logreg", "--member", "synth:knn",
                                    "--threshold-rule", "nope", "--store", str(probed.root)])
    assert bad.exit_code == 2 and "prior_matched" in bad.output


def test_the_threshold_screen_reads_held_out_probabilities_only(probed, capsys):
    from benchmarks.threshold_rules import held_out, screen, summary

    F.fuse(probed, ["synth:logreg", "synth:knn"], n_boot=10)
    runs = probed.results.read("runs")
    fam = runs.loc[runs["family"] == "fusion", "family_id"].iloc[0]
    d = held_out(probed, runs, [fam])
    from mitoprobe.classifiers.protocol import load_protocol

    train = load_protocol(probed, test_sets=[]).train
    assert d["probability"].notna().all() and len(d) == len(train) and set(d["fold"]) == set(train["fold"])
    summary([screen(probed, 2), screen(probed, 2)])
    out = capsys.readouterr().out
    assert "val_youden" in out and "stores above val_youden" in out and "AtNorM" not in out
