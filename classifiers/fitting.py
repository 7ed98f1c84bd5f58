"""Fitting one fold of a probe: the grid searched on the fold's held-out part, the threshold set there,
then test sets only predicted. Shared by the sweep (``runner``) and the deterministic refit of a
recorded family (``refit``: extra test sets, ``predict``), so both fit exactly the same way.
"""

from __future__ import annotations

import inspect
import time

import numpy as np

from mitoprobe.store.errors import ProtocolError

from . import metrics as M
from .features import Features, patch_mean
from .head_calls import head_code, positive_proba
from .heads import HeadSpec
from .protocol import FoldData, TestSet
from .scoring import decision_threshold

SELECTION_RULE = "max AUROC on the fold's held-out part (whole slides; training data only)"


def _fit(spec: HeadSpec, params: dict, X, y, X_val, y_val, where: str):
    with head_code(spec, where, f"the factory ({params or 'no arguments'})"):
        est = spec.factory(**params)
    with head_code(spec, where, "fit"):
        if spec.uses_val:
            est.fit(X, y, X_val=X_val, y_val=y_val)
        else:
            est.fit(X, y)
    return est


def _seeded_params(spec: HeadSpec, params: dict, seed: int) -> dict:
    """``params`` plus ``random_state=seed`` when the head is stochastic and takes one."""
    sig = inspect.signature(spec.factory).parameters
    takes = "random_state" in sig or any(p.kind == p.VAR_KEYWORD for p in sig.values())
    with head_code(spec, "called with no arguments (to find a random_state)", "the factory"):
        est = spec.factory()
        last = est.steps[-1][1] if hasattr(est, "steps") else est
        own = last.get_params(deep=False) if hasattr(last, "get_params") else {}
    if takes and "random_state" in own:
        return {"random_state": seed, **params}
    return dict(params)


def grid_points(spec, params: dict) -> list[dict]:
    """The head's grid without the keys set explicitly (an explicit parameter is fixed, not searched),
    each remaining point once."""
    points: list[dict] = []
    for cand in spec.grid:
        free = {k: v for k, v in cand.items() if k not in params}
        if free not in points:
            points.append(free)
    return points


def keeps_no_rows(spec: HeadSpec) -> bool:
    """Whether a head's fitted model keeps no reference to the rows it was fitted on: the built-in heads
    scale, bin or copy them, so a fold's rows may be lent to them in place (``Features.fold_matrices``). Any
    other head gets copies: one that keeps its rows (scikit-learn's brute-force kNN does) would predict the
    test sets from rows that have since been moved back."""
    return spec.source is None and spec.factory.__module__.startswith(f"{__package__}.heads")


def fit_fold(spec: HeadSpec, params: dict, feats: Features, fd: FoldData, train_at: np.ndarray,
             points: list[dict] | None = None) -> dict:
    """Selection and fitting for one fold, from training-side data only (``fd``: no test labels).

    ``train_at``: where the protocol's training patches are in ``feats`` (``feats.locate``, once per family).

    ``points``: the grid points to try (default: the head's grid less the explicit ``params``); a
    refit of a recorded fold passes the one point that was chosen.
    Returns the fitted estimator, the chosen grid point, the held-out probabilities and threshold."""
    if feats.only_fold is not None and fd.fold != feats.only_fold:
        raise ProtocolError(f"{feats.name} comes from fold {feats.only_fold}'s fine-tuned checkpoint; probing it under "
                         f"fold {fd.fold} would validate on patches its backbone was trained on (leakage)")
    t0 = time.perf_counter()
    tr_rows, tr_owner = feats.rows_at(train_at[fd.train_idx])
    va_rows, va_owner = feats.rows_at(train_at[fd.val_idx])
    y_tr = fd.y[fd.train_idx][tr_owner]
    y_val_patch = fd.y[fd.val_idx]
    best = None
    tried = []
    with feats.fold_matrices(tr_rows, va_rows, in_place=keeps_no_rows(spec)) as (X_tr, X_va):  # read-only
        for cand in (grid_points(spec, params) if points is None else points):
            at = f" at {cand}" if cand else ""  # the grid point, in a head's error line
            est = _fit(spec, {**cand, **params}, X_tr, y_tr, X_va, y_val_patch[va_owner], f"fold {fd.fold}{at}")
            p = positive_proba(spec, est, X_va, f"the held-out part of fold {fd.fold}{at}")
            p_val = patch_mean(p, va_owner, len(fd.val_idx))
            score = M.auroc(y_val_patch, p_val)
            tried.append({"params": cand, "val_auroc": score})
            if best is None or score > best[0]:
                best = (score, cand, est, p_val)
    score, chosen, est, p_val = best
    threshold = decision_threshold(spec.threshold_rule, y_val_patch, p_val)
    return dict(estimator=est, chosen=chosen, tried=tried, val_proba=p_val, threshold=float(threshold),
                val_auroc=float(score),
                val_balanced_accuracy=M.balanced_accuracy(y_val_patch, M.predict(p_val, threshold)),
                n_train=int(len(fd.train_idx)), fit_seconds=time.perf_counter() - t0)


def predict_test_set(spec: HeadSpec, est, feats: Features, ts: TestSet, where: str) -> tuple[np.ndarray, float]:
    """P(atypical) per patch of ``ts`` (views averaged) and the seconds it took; ``where`` names the fold and
    the test set in the one line a head's bad output gives (``head_calls.positive_proba``)."""
    t0 = time.perf_counter()
    rows, owner = feats.rows_of(ts.patch_ids)
    p = patch_mean(positive_proba(spec, est, feats.X[rows], where), owner, len(ts.patch_ids))
    return p, time.perf_counter() - t0
