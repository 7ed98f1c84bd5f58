"""The plot tables in classifiers.metrics (ROC/PR vertices, confusion counts, reliability bins)
agree with scikit-learn and with the metrics they illustrate."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mitoprobe.classifiers import metrics


@pytest.fixture
def scores():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(np.clip(0.35 * y + rng.normal(0.35, 0.2, 300), 0, 1), 2)  # rounded: many ties
    return y, s


def test_roc_points_match_sklearn(scores):
    y, s = scores
    roc = metrics.roc_points(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    np.testing.assert_allclose(roc["threshold"].iloc[1:], thr[1:])
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(metrics.auroc(y, s))


def test_pr_points_match_sklearn(scores):
    y, s = scores
    pr = metrics.pr_points(y, s)
    precision, recall, _ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(pr["recall"], recall[::-1])
    np.testing.assert_allclose(pr["precision"], precision[::-1])
    ap = np.sum(np.diff(pr["recall"]) * pr["precision"].iloc[1:])
    assert ap == pytest.approx(metrics.auprc(y, s))


def test_confusion_counts_match_sklearn(scores):
    y, s = scores
    p = metrics.predict(s, 0.5)
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
    assert metrics.confusion_counts(y, p) == dict(tp=tp, fp=fp, tn=tn, fn=fn)


def test_reliability_table_is_the_ece(scores):
    y, s = scores
    t = metrics.reliability_table(y, s)
    assert t["n"].sum() == len(y) and (t["n"] > 0).all()
    ece = float((t["n"] * (t["fraction_positive"] - t["mean_predicted"]).abs()).sum() / len(y))
    assert ece == pytest.approx(metrics.ece(y, s))
    assert ((t["mean_predicted"] >= t["lower"] - 1e-12) & (t["mean_predicted"] <= t["upper"] + 1e-12)).all()


def test_curves_empty_without_both_classes():
    assert metrics.roc_points([1, 1], [0.2, 0.9]).empty
    assert metrics.pr_points([0, 0], [0.2, 0.9]).empty
