"""Every metric mitoprobe reports, in one place: pure functions of labels and scores.

``y_true`` is 1 for atypical (the positive class, ``POSITIVE``) and 0 for normal; ``y_score`` is the
probability of atypical. The CLI, the report and the dashboard import from here; nothing computes a
metric inline elsewhere.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mitoprobe.store.schema import CI_METRICS  # the metrics of `runs` with a 95% CI: the schema names them

POSITIVE = 1  # atypical mitotic figure (AMF); normal (NMF) is 0
ECE_BINS = 15
N_BOOTSTRAP = 1000


def _arrays(y_true, y_score=None):
    y = np.asarray(y_true).astype(np.int64).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be 0/1 with 1 = atypical")
    if y_score is None:
        return y
    return y, np.asarray(y_score, dtype=np.float64).ravel()


def sensitivity(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    pos = y == POSITIVE
    return float((p[pos] == POSITIVE).mean()) if pos.any() else float("nan")


def specificity(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    neg = y != POSITIVE
    return float((p[neg] != POSITIVE).mean()) if neg.any() else float("nan")


def balanced_accuracy(y_true, y_pred) -> float:
    return float(np.mean([sensitivity(y_true, y_pred), specificity(y_true, y_pred)]))


def f1(y_true, y_pred) -> float:
    y, p = _arrays(y_true, y_pred)
    tp = float(((p == 1) & (y == 1)).sum())
    denom = float((p == 1).sum() + (y == 1).sum())
    return 2 * tp / denom if denom else 0.0


def _tied_ranks(s: np.ndarray) -> np.ndarray:
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s))
    # average rank over ties
    _, first, counts = np.unique(ss, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return ranks


def auroc(y_true, y_score) -> float:
    """Mann-Whitney U / (n_pos n_neg); ties count one half (identical to sklearn's roc_auc_score)."""
    y, s = _arrays(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _tied_ranks(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auprc(y_true, y_score) -> float:
    """Average precision (step-wise area under the precision-recall curve, as sklearn)."""
    y, s = _arrays(y_true, y_score)
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    # group tied scores: precision/recall evaluated only at distinct thresholds
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp = np.cumsum(ys)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(y_true, y_score) -> float:
    y, s = _arrays(y_true, y_score)
    return float(np.mean((s - y) ** 2))


def ece(y_true, y_score, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(atypical): equal-width bins, |mean(y) - mean(p)| weighted by
    the bin's share of samples."""
    y, s = _arrays(y_true, y_score)
    idx = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=s, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    keep = n > 0
    return float(np.sum(np.abs(sum_y[keep] - sum_p[keep])) / len(y))


def cohen_kappa(a, b) -> float:
    """Cohen's kappa of two 0/1 raters."""
    a, b = np.asarray(a).astype(int), np.asarray(b).astype(int)
    po = float((a == b).mean())
    pa, pb = a.mean(), b.mean()
    pe = pa * pb + (1 - pa) * (1 - pb)
    return float((po - pe) / (1 - pe)) if pe < 1 else float("nan")


def predict(y_score, threshold: float) -> np.ndarray:
    """The one decision rule: atypical when P(atypical) >= threshold."""
    return (np.asarray(y_score, dtype=np.float64) >= threshold).astype(np.int64)


def all_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Every reported metric for one set of predictions."""
    y, s = _arrays(y_true, y_score)
    p = predict(s, threshold)
    return dict(balanced_accuracy=balanced_accuracy(y, p), auroc=auroc(y, s), auprc=auprc(y, s),
                sensitivity=sensitivity(y, p), specificity=specificity(y, p), f1=f1(y, p),
                brier=brier(y, s), ece=ece(y, s))


# -- thresholds -----------------------------------------------------------------------------------
def best_threshold(y_true, y_score) -> float:
    """Threshold maximising balanced accuracy (Youden's J) on the given (training-side) data.

    Returns the midpoint between the chosen score and the next lower distinct score, so that it
    generalises rather than sitting exactly on a training score."""
    y, s = _arrays(y_true, y_score)
    n_pos, n_neg = y.sum(), (1 - y).sum()
    if n_pos == 0 or n_neg == 0:
        return 0.5
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tpr = np.cumsum(ys)[last] / n_pos
    fpr = np.cumsum(1 - ys)[last] / n_neg
    j = int(np.argmax(tpr - fpr))
    hi = ss[last[j]]
    lo = ss[last[j] + 1] if last[j] + 1 < len(ss) else hi
    return float((hi + lo) / 2)


# -- bootstrap ------------------------------------------------------------------------------------
def _multiplicities(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) counts of how often each sample is drawn in each resample (with replacement)."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _resampled(pos_s: np.ndarray, neg_s: np.ndarray, threshold: float, w_pos: np.ndarray,
               w_neg: np.ndarray) -> dict[str, np.ndarray]:
    """``CI_METRICS`` of every resample given by the multiplicities ``w_pos``/``w_neg`` (n_boot rows)."""
    n_pos, n_neg, n_boot = len(pos_s), len(neg_s), len(w_pos)
    sens = w_pos @ (pos_s >= threshold).astype(np.float64) / n_pos
    spec = w_neg @ (neg_s < threshold).astype(np.float64) / n_neg
    # AUROC: for every positive, the (weighted) number of negatives scoring below it (+ half ties)
    order = np.argsort(neg_s, kind="mergesort")
    neg_sorted = neg_s[order]
    cum = np.concatenate([np.zeros((n_boot, 1)), np.cumsum(w_neg[:, order], axis=1)], axis=1)
    lo = np.searchsorted(neg_sorted, pos_s, side="left")
    hi = np.searchsorted(neg_sorted, pos_s, side="right")
    below = cum[:, lo] + 0.5 * (cum[:, hi] - cum[:, lo])  # (n_boot, n_pos)
    auc = np.einsum("bi,bi->b", w_pos, below) / (n_pos * n_neg)
    return {"balanced_accuracy": (sens + spec) / 2, "auroc": auc, "sensitivity": sens, "specificity": spec}


def bootstrap_ci(y_true, y_score, threshold: float = 0.5, n_boot: int = N_BOOTSTRAP, alpha: float = 0.05,
                 random_state: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile 95% CIs for ``CI_METRICS`` from ``n_boot`` class-stratified resamples.

    Vectorised: each resample is a vector of multiplicities over the positives and over the
    negatives, so balanced accuracy and AUROC for all resamples are a few matrix products."""
    y, s = _arrays(y_true, y_score)
    pos_s, neg_s = s[y == 1], s[y == 0]
    n_pos, n_neg = len(pos_s), len(neg_s)
    nan = (float("nan"), float("nan"))
    if n_pos == 0 or n_neg == 0:
        return {m: nan for m in CI_METRICS}
    rng = np.random.default_rng(random_state)
    w_pos, w_neg = _multiplicities(rng, n_pos, n_boot), _multiplicities(rng, n_neg, n_boot)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    out = {}
    for name, vals in _resampled(pos_s, neg_s, threshold, w_pos, w_neg).items():
        low, high = np.percentile(vals, q)
        out[name] = (float(low), float(high))
    return out


PAIRED_METRICS = ("balanced_accuracy", "auroc")


def paired_bootstrap(y_true, score_a, threshold_a: float, score_b, threshold_b: float, n_boot: int = N_BOOTSTRAP,
                     alpha: float = 0.05, random_state: int = 0) -> dict[str, dict[str, float]]:
    """Differences a - b in balanced accuracy (each at its own threshold) and AUROC on the same patches,
    with a paired, class-stratified bootstrap: every resample draws the same patches for both models, so
    their correlation is kept (two models' CIs overlapping says little; this tests the difference).

    Returns ``{metric: {diff, ci_low, ci_high, p}}``; ``p`` is the two-sided bootstrap p-value of
    "no difference", 2 x the smaller tail of the resampled differences around 0, with the +1 correction."""
    y, a = _arrays(y_true, score_a)
    _, b = _arrays(y_true, score_b)
    pos, neg = y == 1, y == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return {m: dict(diff=float("nan"), ci_low=float("nan"), ci_high=float("nan"), p=float("nan"))
                for m in PAIRED_METRICS}
    rng = np.random.default_rng(random_state)
    w_pos, w_neg = _multiplicities(rng, n_pos, n_boot), _multiplicities(rng, n_neg, n_boot)
    ra = _resampled(a[pos], a[neg], threshold_a, w_pos, w_neg)
    rb = _resampled(b[pos], b[neg], threshold_b, w_pos, w_neg)
    point = {"balanced_accuracy": balanced_accuracy(y, predict(a, threshold_a)) - balanced_accuracy(y, predict(b, threshold_b)),
             "auroc": auroc(y, a) - auroc(y, b)}
    out = {}
    for m in PAIRED_METRICS:
        d = ra[m] - rb[m]
        low, high = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        tail = min(np.sum(d <= 0), np.sum(d >= 0))
        out[m] = dict(diff=float(point[m]), ci_low=float(low), ci_high=float(high),
                      p=float(min(1.0, 2 * (tail + 1) / (n_boot + 1))))
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of several p-values (family-wise error), in the input order; NaN
    stays NaN and does not count. Written here because it is five lines (statsmodels is not a dependency)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="mergesort")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# -- agreement with experts -------------------------------------------------------------------------
def expert_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in (f"expert{k}_atypical" for k in range(1, 6)) if c in df and df[c].notna().any()]


def kappa_vs_experts(y_pred, votes: pd.DataFrame) -> dict[str, float]:
    """Cohen's kappa of the model's decisions against each expert's votes (where votes exist).

    ``votes``: one row per prediction, columns ``expert<k>_atypical`` (nullable bool)."""
    p = np.asarray(y_pred).astype(int)
    out = {}
    for col in expert_columns(votes):
        v = votes[col]
        m = v.notna().to_numpy()
        if m.any():
            out[col.replace("_atypical", "")] = cohen_kappa(p[m], v[m].astype(int).to_numpy())
    return out


def expert_reference(votes: pd.DataFrame) -> pd.DataFrame:
    """The human reference: each expert against the majority of the *other* experts.

    Patches where the others tie are left out (counted in ``n_ties``). Returns one row per expert
    with balanced accuracy, Cohen's kappa and n."""
    cols = expert_columns(votes)
    rows = []
    for col in cols:
        others = [c for c in cols if c != col]
        if not others:
            continue
        sub = votes[[col, *others]].dropna()
        if sub.empty:
            continue
        o = sub[others].astype(int).to_numpy()
        yes = o.sum(axis=1)
        no = o.shape[1] - yes
        keep = yes != no
        maj = (yes > no).astype(int)[keep]
        e = sub[col].astype(int).to_numpy()[keep]
        rows.append(dict(expert=col.replace("_atypical", ""), n=int(keep.sum()), n_ties=int((~keep).sum()),
                         balanced_accuracy=balanced_accuracy(maj, e), kappa=cohen_kappa(e, maj)))
    return pd.DataFrame(rows, columns=["expert", "n", "n_ties", "balanced_accuracy", "kappa"])


# -- plot tables (the dashboard draws these; computed here so curves and numbers agree) -------------
def _cumulative(y, s):
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp = np.cumsum(ys)[last]
    return ss[last], tp, (last + 1) - tp


def roc_points(y_true, y_score) -> pd.DataFrame:
    """ROC vertices (fpr, tpr, threshold), one per distinct score, from (0, 0); empty without both classes."""
    y, s = _arrays(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    thr, tp, fp = _cumulative(y, s)
    return pd.DataFrame(dict(fpr=np.r_[0.0, fp / n_neg], tpr=np.r_[0.0, tp / n_pos], threshold=np.r_[np.inf, thr]))


def pr_points(y_true, y_score) -> pd.DataFrame:
    """Precision-recall vertices by increasing recall, from (recall 0, precision 1); the step
    area ``sum(diff(recall) * precision[1:])`` is :func:`auprc`. Empty without both classes."""
    y, s = _arrays(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return pd.DataFrame(columns=["recall", "precision", "threshold"])
    thr, tp, fp = _cumulative(y, s)
    return pd.DataFrame(dict(recall=np.r_[0.0, tp / n_pos], precision=np.r_[1.0, tp / (tp + fp)],
                             threshold=np.r_[np.inf, thr]))


def confusion_counts(y_true, y_pred) -> dict[str, int]:
    y, p = _arrays(y_true, y_pred)
    p = p.astype(np.int64)
    return dict(tp=int(((p == 1) & (y == 1)).sum()), fp=int(((p == 1) & (y == 0)).sum()),
                tn=int(((p == 0) & (y == 0)).sum()), fn=int(((p == 0) & (y == 1)).sum()))


def reliability_table(y_true, y_score, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """The non-empty bins behind :func:`ece`: bounds, n, mean predicted P(atypical), fraction atypical."""
    y, s = _arrays(y_true, y_score)
    idx = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    keep = np.flatnonzero(n > 0)
    mean_p = np.bincount(idx, weights=s, minlength=n_bins)[keep] / n[keep]
    frac = np.bincount(idx, weights=y, minlength=n_bins)[keep] / n[keep]
    return pd.DataFrame(dict(lower=keep / n_bins, upper=(keep + 1) / n_bins, n=n[keep],
                             mean_predicted=mean_p, fraction_positive=frac))
