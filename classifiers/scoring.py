"""Scoring under the protocol, in one public place: everyone who scores a test set or builds a fold
ensemble (the probe runner, the fine-tuning job) goes through here, so a number means the same
thing on every row of ``runs``.

* :func:`decision_threshold` - a rule name -> the threshold, from held-out (training-side) data only.
* :func:`fold_ensemble` - the mean of the fold models' test probabilities, its threshold chosen on
  the out-of-fold held-out probabilities (never on a test set).
* :func:`score_test_set` - the only place test labels are read: metrics, bootstrap CIs, kappa per expert.
* :func:`prediction_frame` - the ``predictions`` rows of one run on one test set; :func:`heldout_frame`
  those of its held-out (or out-of-fold) probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mitoprobe.store.errors import ProtocolError
from mitoprobe.store.schema import HELDOUT_SET

from . import metrics as M
from .protocol import TestSet
from .thresholds import PER_FOLD
from .thresholds import RULES as THRESHOLDS

THRESHOLD_RULES = {rule: THRESHOLDS[rule] for rule in PER_FOLD}  # the rules that need one fold's held-out part
ENSEMBLE_RULE = "mean of the fold models' probabilities"


def decision_threshold(rule: str, y_heldout: np.ndarray, p_heldout: np.ndarray) -> float:
    """The decision threshold under ``rule``, chosen on held-out labels and probabilities only."""
    if rule == "fixed_0.5":
        return 0.5
    if rule == "val_youden":
        return float(M.best_threshold(y_heldout, p_heldout))
    raise ProtocolError(f"threshold rule {rule!r} is not a per-fold rule (one of {sorted(THRESHOLD_RULES)}); the "
                        "rules that pool folds (classifiers.thresholds) are chosen once every fold is scored")


@dataclass(frozen=True)
class Ensemble:
    """The fold ensemble: mean test probabilities and the out-of-fold threshold with its held-out scores."""

    proba: dict[str, np.ndarray]
    threshold: float
    val_auroc: float
    val_balanced_accuracy: float
    n_train: int


def fold_ensemble(y_train: np.ndarray, oof: np.ndarray, fold_probs: dict[str, list[np.ndarray]],
                  threshold_rule: str = "val_youden", threshold: float | None = None) -> Ensemble:
    """Average each test set's fold-model probabilities; choose the threshold on ``oof`` (each training
    patch's probability from the fold model that held it out), or take ``threshold`` (chosen by the caller on
    the same out-of-fold probabilities: ``thresholds.ensemble_threshold``)."""
    y = np.asarray(y_train).astype(np.int64)
    if np.isnan(oof).any():
        raise ProtocolError(f"fold ensemble needs an out-of-fold probability for every training patch; "
                            f"{int(np.isnan(oof).sum())} are missing (not every fold finished)")
    thr = decision_threshold(threshold_rule, y, oof) if threshold is None else float(threshold)
    return Ensemble(proba={name: np.mean(ps, axis=0) for name, ps in fold_probs.items()}, threshold=thr,
                    val_auroc=M.auroc(y, oof), val_balanced_accuracy=M.balanced_accuracy(y, M.predict(oof, thr)),
                    n_train=len(y))


def score_test_set(ts: TestSet, proba: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict:
    """Metrics, 95% bootstrap CIs and kappa per expert of one run on one test set (reads its labels)."""
    row = dict(n=int(len(ts.y)), n_pos=int(ts.y.sum()), **M.all_metrics(ts.y, proba, threshold))
    for m, (lo, hi) in M.bootstrap_ci(ts.y, proba, threshold, n_boot=n_boot, random_state=seed).items():
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
    kap = M.kappa_vs_experts(M.predict(proba, threshold), ts.votes)
    for name, v in kap.items():
        row[f"kappa_{name}"] = v
    row["kappa_experts_mean"] = float(np.mean(list(kap.values()))) if kap else float("nan")
    return row


def prediction_frame(run_id: str, ts: TestSet, fold: int, proba: np.ndarray, threshold: float) -> pd.DataFrame:
    """``predictions`` rows of one run on one test set."""
    return pd.DataFrame(dict(run_id=run_id, patch_id=ts.patch_ids, fold=fold, test_set=ts.name,
                             probability=proba, threshold=threshold, prediction=M.predict(proba, threshold),
                             split="test"))


def heldout_frame(run_id: str, patch_ids: np.ndarray, fold: int, proba: np.ndarray, threshold: float) -> pd.DataFrame:
    """``predictions`` rows of the held-out probabilities selection used: fold k's held-out part, or
    (fold -1) every training patch's out-of-fold probability. Stored so a threshold or grid choice can
    be audited and a stacker trained on out-of-fold probabilities only."""
    return pd.DataFrame(dict(run_id=run_id, patch_id=pd.Series(patch_ids).array, fold=fold, test_set=HELDOUT_SET,
                             probability=proba, threshold=threshold, prediction=M.predict(proba, threshold),
                             split="val"))
