"""Decision-threshold rules, and how well each transfers to slides it never saw.

Why: a family's ranking can be good while its decision is not (round 4: AMi-Br-test AUROC 0.866, balanced
accuracy 0.766, held-out balanced accuracy 0.807). Fold k's threshold is the Youden point of fold k's own
held-out part, a few hundred patches; a threshold fitted on more slides, or on the label prior, may carry
over to new slides better. Every rule here reads training-side (held-out) probabilities and labels only.

Rules (``RULES``), given every training patch's out-of-fold probability ``p`` (from the fold model that held
it out), its label ``y`` and its ``fold``:

* ``val_youden``: fold k's own held-out Youden point (``metrics.best_threshold``), per fold;
* ``fixed_0.5``: 0.5;
* ``pooled_youden``: the Youden point of all folds' held-out probabilities pooled, one for every fold;
* ``mean_youden``: the mean of the folds' own Youden points, one for every fold;
* ``prior_matched``: the threshold at which the pooled probabilities call as many patches atypical as the
  labels do, one for every fold.

:func:`fold_thresholds` gives each fold's threshold under a rule (what a fusion stores);
:func:`transfer_scores` judges the rules by fitting each on all it would use except one half of a fold's
held-out slides and scoring that half with that fold's model (docs/offline-accuracy.md, round 5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mitoprobe.store.errors import ProtocolError

from . import metrics as M

RULES = {
    "val_youden": "maximise balanced accuracy on the fold's held-out part (ensemble: on out-of-fold probabilities)",
    "fixed_0.5": "fixed at 0.5 (the paper's)",
    "pooled_youden": "maximise balanced accuracy on every fold's held-out part pooled (one threshold for all folds)",
    "mean_youden": "the mean of the folds' own held-out Youden points (one threshold for all folds)",
    "prior_matched": "call as many pooled held-out patches atypical as are labelled so (one threshold for all folds)",
}
PER_FOLD = ("val_youden", "fixed_0.5")  # need only one fold's held-out part (``scoring.decision_threshold``)


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ProtocolError(f"unknown threshold rule {rule!r}; choose from {sorted(RULES)}")
    return rule


def prior_matched(y: np.ndarray, p: np.ndarray) -> float:
    """The midpoint between the n-th and (n+1)-th highest probability, n = the number labelled atypical."""
    s = np.sort(np.asarray(p, dtype=np.float64))[::-1]
    n = int(np.asarray(y).sum())
    if n == 0 or n == len(s):
        return 0.5
    return float((s[n - 1] + s[n]) / 2)


def _fit(rule: str, parts: list[tuple[np.ndarray, np.ndarray]], own: int) -> float:
    """The threshold from held-out ``parts`` (label, probability) of several fold models; ``parts[own]`` is the
    part of the model the threshold will serve (the only one ``val_youden`` reads)."""
    if rule == "fixed_0.5":
        return 0.5
    if rule == "val_youden":
        return float(M.best_threshold(*parts[own]))
    if rule == "mean_youden":
        return float(np.mean([M.best_threshold(y, p) for y, p in parts]))
    y = np.concatenate([y for y, _ in parts])
    p = np.concatenate([p for _, p in parts])
    return float(M.best_threshold(y, p)) if rule == "pooled_youden" else prior_matched(y, p)


def fold_thresholds(rule: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> dict[int, float]:
    """Each fold's threshold under ``rule`` from the out-of-fold probabilities ``p`` (training patches only)."""
    check_rule(rule)
    ks = sorted(int(k) for k in np.unique(folds))
    parts = [(np.asarray(y)[folds == k], np.asarray(p)[folds == k]) for k in ks]
    return {k: _fit(rule, parts, i) for i, k in enumerate(ks)}


def ensemble_threshold(rule: str, y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> float:
    """The fold ensemble's threshold on the out-of-fold probabilities: the pooled point for the Youden rules."""
    check_rule(rule)
    if rule in ("val_youden", "pooled_youden"):
        return float(M.best_threshold(y, p))
    return float(np.mean(list(fold_thresholds(rule, y, p, folds).values())))


def slide_halves(slides: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """True for the patches of a random half of the distinct slides (whole slides on each side)."""
    names = np.unique(slides)
    first = set(rng.permutation(names)[: len(names) // 2])
    return np.array([s in first for s in slides])


def transfer_scores(y, p, folds, slides, rules=tuple(RULES), n_splits: int = 10, seed: int = 0) -> pd.DataFrame:
    """Each rule's balanced accuracy on held-out slides it was not fitted on: per fold k and seeded split of
    fold k's held-out slides into halves, the rule is fitted on the other half (and, for the pooled rules, the
    other folds' held-out parts) and scored on this half with fold k's model. One row per (rule, fold, split,
    half); a half without both classes is skipped."""
    y, p, folds, slides = (np.asarray(a) for a in (y, p, folds, slides))
    for r in rules:
        check_rule(r)
    ks = sorted(int(k) for k in np.unique(folds))
    rows = []
    for i, k in enumerate(ks):
        own = folds == k
        others = [(y[folds == j], p[folds == j]) for j in ks if j != k]
        for split in range(n_splits):
            first = slide_halves(slides[own], np.random.default_rng([seed, k, split]))
            for half, target in enumerate((first, ~first)):
                yt, pt = y[own][target], p[own][target]
                if yt.min() == yt.max():
                    continue
                parts = [(y[own][~target], p[own][~target]), *others]
                for r in rules:
                    t = _fit(r, parts, 0)
                    rows.append(dict(rule=r, fold=k, split=split, half=half, threshold=t,
                                     balanced_accuracy=M.balanced_accuracy(yt, M.predict(pt, t))))
    return pd.DataFrame(rows)


def transfer_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Per rule: the transfer balanced accuracy (mean over folds, splits, halves), its spread over the folds'
    means, and the mean threshold."""
    per_fold = scores.groupby(["rule", "fold"])["balanced_accuracy"].mean()
    table = scores.groupby("rule").agg(transfer_balanced_accuracy=("balanced_accuracy", "mean"),
                                       mean_threshold=("threshold", "mean"))
    table["fold_std"] = per_fold.groupby("rule").std(ddof=0)
    return table.sort_values("transfer_balanced_accuracy", ascending=False)
