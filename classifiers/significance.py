"""Is one family really better than another on a test set? Paired tests on the same patches.

Two families' confidence intervals overlapping says little when both score the same patches: their
errors are correlated. :func:`compare` resamples the patches once per bootstrap draw for both
families (``metrics.paired_bootstrap``) and tests the difference in balanced accuracy and AUROC;
with several pairs on one test set, the p-values are Holm-adjusted (``metrics.holm``) per test set
and metric, so "significant" keeps its meaning when many comparisons are made.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd

from mitoprobe.store.errors import ProtocolError

from . import metrics as M
from .labels import family_labels
from .protocol import load_test_sets

COLUMNS = ["test_set", "family_a", "family_b", "label_a", "label_b", "fold", "n", "metric", "a", "b", "diff",
           "ci_low", "ci_high", "p", "p_holm"]


def resolve_families(runs: pd.DataFrame, specs: list[str]) -> list[str]:
    """A family's label as the report shows it (e.g. a fusion's ``--name``), ``MODEL:HEAD`` (the newest
    family of that model and head) or a family id (or its prefix)."""
    out = []
    by_label: dict[str, list[str]] = {}
    for fid, lab in family_labels(runs).items():
        by_label.setdefault(lab, []).append(fid)
    for spec in specs:
        if len(by_label.get(spec, ())) == 1:
            out.append(by_label[spec][0])
            continue
        model, sep, head = spec.rpartition(":")
        if sep:
            hits = runs[(runs["model"] == model) & (runs["head"] == head)]
            if hits.empty:
                raise ProtocolError(f"--compare {spec!r}: no runs of model {model!r} with head {head!r}; "
                                    "`mitoprobe report` lists them")
            out.append(hits.sort_values("created_at")["family_id"].iloc[-1])
            continue
        ids = sorted({f for f in runs["family_id"].unique() if f.startswith(spec)})
        if len(ids) != 1:
            raise ProtocolError(f"--compare {spec!r}: {'no' if not ids else 'several'} run families match; "
                                "name one as MODEL:HEAD (e.g. handcrafted:lgbm) or by its family id")
        out.append(ids[0])
    if len(set(out)) < 2:
        raise ProtocolError("compare needs at least two different run families")
    return out


def compare(store, family_ids: list[str], test_sets: list[str] | None = None, fold: int = -1,
            n_boot: int = M.N_BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Every pair of ``family_ids`` on every test set both scored, at ``fold`` (-1: the fold ensembles;
    each family at its own stored threshold), paired on the same patches. One row per pair x metric."""
    runs = store.results.read("runs")
    preds = store.results.read("predictions")
    if runs.empty or preds.empty:
        return pd.DataFrame(columns=COLUMNS)
    if "split" in preds:
        preds = preds[preds["split"].fillna("test") == "test"]
    labels = family_labels(runs)
    rows = []
    for name, ts in load_test_sets(store, test_sets).items():
        y = pd.Series(ts.y, index=ts.patch_ids)
        scored = {}
        for fid in family_ids:
            rids = set(runs.loc[(runs["family_id"] == fid) & (runs["fold"] == fold) & (runs["test_set"] == name),
                                "run_id"])
            p = preds[preds["run_id"].isin(rids) & (preds["test_set"] == name) & (preds["fold"] == fold)]
            if len(p):
                p = p.drop_duplicates("patch_id", keep="last").set_index("patch_id")
                scored[fid] = (p["probability"], float(p["threshold"].iloc[0]))
        block = []
        for fa, fb in combinations([f for f in family_ids if f in scored], 2):
            (pa, ta), (pb, tb) = scored[fa], scored[fb]
            ids = y.index[y.index.isin(pa.index) & y.index.isin(pb.index)]
            yy, sa, sb = y[ids].to_numpy(), pa[ids].to_numpy(), pb[ids].to_numpy()
            res = M.paired_bootstrap(yy, sa, ta, sb, tb, n_boot=n_boot, random_state=seed)
            own = {"balanced_accuracy": (M.balanced_accuracy(yy, M.predict(sa, ta)),
                                         M.balanced_accuracy(yy, M.predict(sb, tb))),
                   "auroc": (M.auroc(yy, sa), M.auroc(yy, sb))}
            for metric, r in res.items():
                block.append(dict(test_set=name, family_a=fa, family_b=fb, label_a=labels.get(fa, fa),
                                  label_b=labels.get(fb, fb), fold=fold, n=len(ids), metric=metric,
                                  a=own[metric][0], b=own[metric][1], **r))
        if block:
            df = pd.DataFrame(block)
            for metric, idx in df.groupby("metric").groups.items():
                df.loc[idx, "p_holm"] = M.holm(df.loc[idx, "p"].to_numpy())
            rows.append(df)
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(rows, ignore_index=True)[COLUMNS]


def format_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Strings for the terminal/markdown: the difference with its 95% CI, raw and Holm-adjusted p."""
    fmt = lambda v: "" if pd.isna(v) else f"{v:.3f}"  # noqa: E731
    return pd.DataFrame({
        "test set": df["test_set"], "metric": df["metric"], "a": df["label_a"], "b": df["label_b"],
        "a − b [95% CI]": [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in zip(df["diff"], df["ci_low"],
                                                                                   df["ci_high"])],
        "p": df["p"].map(fmt), "p (Holm)": df["p_holm"].map(fmt),
        "n": df["n"],
    })


__all__ = ["COLUMNS", "compare", "family_labels", "format_comparison", "resolve_families"]
