"""The leaderboard: our runs next to the paper's published numbers for the same family.

Fold rows give mean ± std over the 5 fold models (the paper's way of reporting); the fold
ensemble (``fold = -1``) is shown separately with its 95% bootstrap CI. For each
(model, head, options) only the most recent family (code version) is shown; its repeats are pooled.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mitoprobe.paper import (PAPER_COMPARABLE, PAPER_FAMILY, PAPER_HEADS, PAPER_MODEL_NAMES, paper_results,
                            pooled_model_name)
from mitoprobe.store.keys import positions

from . import metrics as M
from .labels import family_label, unique_labels, without_name
from .protocol import TEST_SETS, load_protocol
from .runs import read_runs

DELTA_COLUMNS = ["delta_vs_paper", "paper_best_balanced_accuracy", "paper_best_model", "paper_best_family"]
NUMERIC = ["n_folds", "balanced_accuracy_mean", "balanced_accuracy_std", "auroc_mean", "auroc_std",
           "auprc_mean", "brier_mean", "ece_mean", "kappa_experts_mean",
           "ensemble_balanced_accuracy", "ensemble_balanced_accuracy_ci_low", "ensemble_balanced_accuracy_ci_high",
           "ensemble_auroc", "ensemble_auroc_ci_low", "ensemble_auroc_ci_high", "oof_auroc", "oof_balanced_accuracy",
           "n_seeds", "balanced_accuracy_seed_std"]  # seeds: the family's repeats (``probe --seeds``)
# Mean ± std over the fold models with the paper's convention (np.std over the 5 folds: population
# std, ddof=0; the benchmark's inference notebooks), so our rows and the paper's compare like for like.
STD_DDOF = 0
# ``label``: the family's short name (``classifiers.labels``), the paper's rows "paper · <model> · <family>"
COLUMNS = ["source", "family", "model", "head", "pooling", "tta", "test_set", *NUMERIC, "family_id", "label"]


def _latest_families(runs: pd.DataFrame) -> pd.DataFrame:
    keys = ["family", "model", "head", "options"]  # options without a display name: a named family replaces its
    last = (runs.assign(options=runs["options"].map(without_name))  # unnamed code-version predecessor
            .groupby(keys + ["family_id"], dropna=False)["created_at"].max().reset_index())
    keep = last.sort_values("created_at").groupby(keys, dropna=False).tail(1)["family_id"]
    return runs[runs["family_id"].isin(set(keep))]


def _ours(runs: pd.DataFrame) -> pd.DataFrame:
    rows, keys = [], []
    runs = runs.assign(model=runs["model"].map(pooled_model_name))
    for (fam, model, head, options, ts), g in runs.groupby(["family", "model", "head", "options", "test_set"]):
        folds = g[g["fold"] >= 0]
        ens = g[g["fold"] == -1]
        opt = json.loads(options)
        first = g.iloc[0]
        r = dict(source="mitoprobe", family=fam, model=model, head=head, pooling=opt.get("pooling"),
                 tta=bool(opt.get("tta")), test_set=ts, n_folds=int(folds["fold"].nunique()),
                 family_id=first["family_id"],  # one per group after _latest_families (dashboard links)
                 label=family_label(dict(family=fam, model=model, head=head, options=options,
                                         config_json=first.get("config_json"), family_id=first["family_id"])))
        for m in ("balanced_accuracy", "auroc"):
            r[f"{m}_mean"] = folds[m].mean()
            r[f"{m}_std"] = folds[m].std(ddof=STD_DDOF) if len(folds) > 1 else np.nan
        per_seed = folds.groupby("repeat")["balanced_accuracy"].mean()  # each repeat's fold mean
        r["n_seeds"] = int(len(per_seed))
        r["balanced_accuracy_seed_std"] = per_seed.std(ddof=STD_DDOF) if len(per_seed) > 1 else np.nan
        for m in ("auprc", "brier", "ece", "kappa_experts_mean"):
            r[m if m.endswith("_mean") else f"{m}_mean"] = folds[m].mean()
        for m in ("balanced_accuracy", "auroc"):
            r[f"ensemble_{m}"] = ens[m].mean() if len(ens) else np.nan
            for s in ("low", "high"):
                r[f"ensemble_{m}_ci_{s}"] = ens[f"{m}_ci_{s}"].mean() if len(ens) else np.nan
        rows.append(r)
        keys.append("\0".join(map(str, (fam, model, head, options))))
    out = pd.DataFrame(rows, columns=COLUMNS)
    # one label per family (model, head, options); a label two of them share (one --name given twice)
    # gets the family id's first characters
    fixed = unique_labels({k: lab for k, lab in zip(keys, out["label"])})
    out["label"] = [lab if fixed[k] == lab else f"{lab} #{fid[:6]}"
                    for k, lab, fid in zip(keys, out["label"], out["family_id"].astype(str))]
    return out


def paper_rows(families: set[str] | None = None, models: set[str] | None = None) -> pd.DataFrame:
    """The paper's published rows in the leaderboard's columns (``source == 'paper'``), each with a
    ``family_id`` and a readable ``label``. ``families``/``models`` (ours, e.g. {"probe"}, {"uni.hf"})
    keep the comparable rows: the same models when we have them, else every row of those families."""
    ref = paper_results()
    if families is not None:
        want = {PAPER_FAMILY.get(f, f) for f in families} | ({"end_to_end"} if "finetune" in families else set())
        ref = ref[ref["family"].isin(want)]
    named = {PAPER_MODEL_NAMES[m] for m in models or () if m in PAPER_MODEL_NAMES}
    if named:
        ref = ref[ref["model"].isin(named)]
    out = pd.DataFrame(dict(source="paper", family=ref["family"], model=ref["model"],
                            head=ref["family"].map(PAPER_HEADS).fillna(ref["family"]),
                            pooling=None, tta=False, test_set=ref["dataset"], n_folds=5,
                            balanced_accuracy_mean=ref["balanced_accuracy_mean"],
                            balanced_accuracy_std=ref["balanced_accuracy_std"],
                            auroc_mean=ref["auroc_mean"], auroc_std=ref["auroc_std"],
                            family_id="paper:" + ref["family"] + ":" + ref["model"],
                            label="paper · " + ref["model"] + " · " + ref["family"].str.replace("_", " ")))
    return out.reindex(columns=COLUMNS)


def leaderboard(store, model: str | None = None, family: str | None = None, with_paper: bool = True) -> pd.DataFrame:
    """One row per (model, head, options, test set), best balanced accuracy first within a test set,
    followed by the paper's rows for the same family; each row with its short ``label``
    (``classifiers.labels``; :func:`compact_board` makes the one-row-per-family table of it)."""
    runs = read_runs(store)
    if runs.empty:
        ours = pd.DataFrame(columns=COLUMNS)
    else:
        if model:
            runs = runs[runs["model"] == model]
        if family:
            runs = runs[runs["family"] == family]
        ours = _ours(_latest_families(runs)) if len(runs) else pd.DataFrame(columns=COLUMNS)
        if len(ours):
            oof = out_of_fold_scores(store, runs[runs["fold"] == -1])
            ours["oof_auroc"] = ours["family_id"].map(oof["auroc"])
            ours["oof_balanced_accuracy"] = ours["family_id"].map(oof["balanced_accuracy"])
    parts = [ours]
    if with_paper:
        fams = set(ours["family"]) or {family or "probe"}
        parts.append(paper_rows(fams, set(ours["model"])))
    df = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else ours
    order = {name: i for i, name in enumerate(TEST_SETS)}
    df["_t"] = df["test_set"].map(order).fillna(len(order))
    df["_s"] = (df["source"] != "mitoprobe").astype(int)
    df = df.sort_values(["_t", "_s", "balanced_accuracy_mean"], ascending=[True, True, False])
    return add_delta_vs_paper(df.drop(columns=["_t", "_s"]).reset_index(drop=True))


def paper_best() -> pd.DataFrame:
    """The best published row per (our family, test set) among the paper's comparable families
    (``PAPER_COMPARABLE``): columns family, test_set, paper_best_balanced_accuracy, paper_best_model,
    paper_best_family."""
    ref = paper_results()
    rows = []
    for ours, theirs in PAPER_COMPARABLE.items():
        sub = ref[ref["family"].isin(theirs)].sort_values("balanced_accuracy_mean", ascending=False, kind="mergesort")
        for ts, g in sub.groupby("dataset", sort=False):
            b = g.iloc[0]
            rows.append(dict(family=ours, test_set=ts, paper_best_balanced_accuracy=float(b["balanced_accuracy_mean"]),
                             paper_best_model=b["model"], paper_best_family=b["family"]))
    return pd.DataFrame(rows, columns=["family", "test_set", *DELTA_COLUMNS[1:]])


def add_delta_vs_paper(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``delta_vs_paper`` (our mean balanced accuracy minus the best comparable paper row
    on the same test set, see ``paper_best``) and that paper row's BA, model and family, on our rows
    (``source == 'mitoprobe'``); empty (NaN/None) on the paper's rows and on families the paper has no
    counterpart for. Idempotent."""
    df = df.drop(columns=[c for c in DELTA_COLUMNS if c in df]).copy()
    best = paper_best().set_index(["family", "test_set"])
    ours = (df["source"] == "mitoprobe").to_numpy() if len(df) else np.zeros(0, bool)
    keys = pd.MultiIndex.from_arrays([df["family"].astype(object), df["test_set"].astype(object)]) if len(df) else None
    for c in DELTA_COLUMNS[1:]:
        vals = best[c].reindex(keys).to_numpy() if len(df) else np.zeros(0)
        df[c] = pd.Series(np.where(ours, vals, None), index=df.index, dtype=float if c.endswith("accuracy")
                          else object)
    df["delta_vs_paper"] = pd.to_numeric(df["balanced_accuracy_mean"], errors="coerce") - df["paper_best_balanced_accuracy"]
    return df


def out_of_fold_scores(store, ensemble_runs: pd.DataFrame) -> pd.DataFrame:
    """AUROC and balanced accuracy (at the ensemble's threshold) of each family's stored out-of-fold
    probabilities, read back from ``predictions`` (``split == "val"``, fold -1) with the training labels:
    the held-out figure that selection saw, shown beside the test figures. Indexed by family_id."""
    cols = ["auroc", "balanced_accuracy"]
    if ensemble_runs.empty:
        return pd.DataFrame(columns=cols)
    run_ids = pa.array(sorted(set(ensemble_runs["run_id"])), pa.string())

    def ensemble_val(t: pa.Table) -> pa.Array:  # a part without split predates held-out rows: none here
        if "split" not in t.column_names:
            return pa.array(np.zeros(t.num_rows, bool))
        return pc.and_(pc.and_(pc.equal(t["split"], "val"), pc.equal(t["fold"], -1)),
                       pc.is_in(t["run_id"], value_set=run_ids.cast(t["run_id"].type)))

    labels = None  # every patch's label, read once there is a row to score
    got: list[tuple[np.ndarray, ...]] = []  # per batch: run (index into run_ids), label, probability, threshold
    for t in store.results.batches("predictions", ["run_id", "patch_id", "split", "fold", "probability", "threshold"],
                                   where=ensemble_val):  # the rows it scores, reduced to numbers a batch at a time
        if t.num_rows:  # Arrow lookups: no Python string per row
            if labels is None:
                labels = store.patches(columns=["patch_id", "y"])
                y = np.append(labels["y"].to_numpy(dtype=float, na_value=np.nan), np.nan)  # a patch not stored: NaN
                among = pa.array(labels["patch_id"])
            numbers = [t[c].to_numpy(zero_copy_only=False) if c in t.column_names else np.full(t.num_rows, np.nan)
                       for c in ("probability", "threshold")]
            got.append((positions(t["run_id"], run_ids), y[positions(t["patch_id"], among)], *numbers))
    if not got:
        return pd.DataFrame(columns=cols)
    run, yt, p, thr = (np.concatenate(c) for c in zip(*got))
    fam = ensemble_runs.drop_duplicates("run_id").set_index("run_id")["family_id"]
    rows = {}
    for i, rid in enumerate(run_ids.to_pylist()):
        mine = run == i
        if mine.any():
            rows[fam[rid]] = dict(auroc=M.auroc(yt[mine], p[mine]), balanced_accuracy=M.balanced_accuracy(
                yt[mine], M.predict(p[mine], float(thr[mine][0]))))
    return pd.DataFrame.from_dict(rows, orient="index", columns=cols)


def human_reference(store) -> pd.DataFrame:
    """Each expert against the others' majority, per test set that has votes (the human ceiling)."""
    rows = []
    for name, ts in load_protocol(store).tests.items():
        ref = M.expert_reference(ts.votes)
        if len(ref):
            rows.append(ref.assign(test_set=name))
    if not rows:
        return pd.DataFrame(columns=["test_set", "expert", "n", "n_ties", "balanced_accuracy", "kappa"])
    return pd.concat(rows, ignore_index=True)[["test_set", "expert", "n", "n_ties", "balanced_accuracy", "kappa"]]


def _pm(mean, std) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"


def _ci(v, lo, hi) -> str:
    return "" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def nan_col(df: pd.DataFrame) -> pd.Series:
    return pd.Series(np.nan, index=df.index)


def _delta(d, model) -> str:
    return "" if pd.isna(d) else f"{d:+.3f} ({model})"


def format_board(df: pd.DataFrame) -> pd.DataFrame:
    """Strings for the terminal/markdown: mean ± std over folds, ensemble with its 95% CI."""
    return pd.DataFrame({
        "test set": df["test_set"], "source": df["source"], "model": df["model"], "head": df["head"],
        "pooling": df["pooling"].fillna("") + np.where(df["tta"].fillna(False).astype(bool), "+tta", ""),
        "bal. acc. (folds)": [_pm(a, b) for a, b in zip(df["balanced_accuracy_mean"], df["balanced_accuracy_std"])],
        "Δ bal. acc. vs paper best": [_delta(*r) for r in zip(df.get("delta_vs_paper", nan_col(df)),
                                                              df.get("paper_best_model", nan_col(df)))],
        "AUROC (folds)": [_pm(a, b) for a, b in zip(df["auroc_mean"], df["auroc_std"])],
        "AUPRC": [("" if pd.isna(v) else f"{v:.3f}") for v in df["auprc_mean"]],
        "Brier": [("" if pd.isna(v) else f"{v:.3f}") for v in df["brier_mean"]],
        "ensemble bal. acc. [95% CI]": [_ci(*r) for r in zip(df["ensemble_balanced_accuracy"],
                                                              df["ensemble_balanced_accuracy_ci_low"],
                                                              df["ensemble_balanced_accuracy_ci_high"])],
        "ensemble AUROC [95% CI]": [_ci(*r) for r in zip(df["ensemble_auroc"], df["ensemble_auroc_ci_low"],
                                                          df["ensemble_auroc_ci_high"])],
        "κ experts": [("" if pd.isna(v) else f"{v:.3f}") for v in df["kappa_experts_mean"]],
        "held-out AUROC (OOF)": [("" if pd.isna(v) else f"{v:.3f}") for v in df["oof_auroc"]],
    })


def ordered_test_sets(names) -> list[str]:
    """Test-set names: the benchmark's (``TEST_SETS``, the paper's order) first, then any others (a lab's
    own cohort) alphabetically."""
    names = {str(n) for n in names if isinstance(n, str) and n}
    known = [t for t in TEST_SETS if t in names]
    return known + sorted(names - set(known))


HELDOUT = "held-out AUROC"
DELTA = "Δ vs paper best"
SEEDS = "seeds ± BA"  # repeats of a family and the std of their mean balanced accuracy on the first test set


def _num(v, fmt: str = "{:.3f}") -> str:
    return "" if v is None or pd.isna(v) else fmt.format(v)


def compact_board(df: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard a person reads (``mitoprobe report``'s default): one row per family with its
    short label, balanced accuracy mean ± std over the fold models per test set side by side, the
    held-out (out-of-fold, training slides) AUROC and Δ = our mean balanced accuracy minus the paper's
    best comparable row, per test set in the test sets' order; ours sorted by held-out AUROC (best first),
    then the paper's published rows (by balanced accuracy on the first test set). Strings, plus
    ``source``; ``leaderboard``'s frame in."""
    sets = ordered_test_sets(df["test_set"].unique()) if len(df) else []
    has_delta = df["delta_vs_paper"].notna() if "delta_vs_paper" in df else pd.Series(False, index=df.index)
    delta_sets = [t for t in sets if has_delta[df["test_set"] == t].any()]  # the paper's test sets
    rows = []
    for (source, label), g in df.groupby(["source", "label"], sort=False, dropna=False):
        by = g.drop_duplicates("test_set").set_index("test_set")
        r = {"source": source, "family": label}
        for t in sets:
            r[t] = _pm(by.at[t, "balanced_accuracy_mean"], by.at[t, "balanced_accuracy_std"]) if t in by.index else ""
        oof = pd.to_numeric(g["oof_auroc"], errors="coerce").dropna()
        r[HELDOUT] = _num(oof.iloc[0]) if len(oof) else ""
        seeds = pd.to_numeric(by.get("n_seeds"), errors="coerce").max() if "n_seeds" in by else np.nan
        first_set = sets[0] if sets and sets[0] in by.index else by.index[0]
        r[SEEDS] = (f"{int(seeds)} ±{by.at[first_set, 'balanced_accuracy_seed_std']:.3f}"
                    if pd.notna(seeds) and seeds > 1 else "")
        deltas = [by.at[t, "delta_vs_paper"] if t in by.index and "delta_vs_paper" in by else np.nan
                  for t in delta_sets]
        r[DELTA] = " ".join(_num(d, "{:+.3f}") or "–" for d in deltas) if any(pd.notna(deltas)) else ""
        r["_oof"] = oof.iloc[0] if len(oof) else -np.inf
        first = by["balanced_accuracy_mean"].get(sets[0]) if sets else np.nan
        r["_first"] = -np.inf if first is None or pd.isna(first) else first
        rows.append(r)
    cols = ["source", "family", *sets, HELDOUT, DELTA]
    if any(r[SEEDS] for r in rows):  # only when some family ran several seeds
        cols.insert(cols.index(HELDOUT), SEEDS)
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    out["_s"] = (out["source"] != "mitoprobe").astype(int)
    out = out.sort_values(["_s", "_oof", "_first", "family"], ascending=[True, False, False, True], kind="mergesort")
    return out[cols].reset_index(drop=True)
