"""The verdict table: the paper's published numbers beside ours, per model x method x test set.

One row per row of the paper's table (``mitoprobe.paper.paper_results``: 7 foundation models x linear
probe and LoRA, 3 end-to-end baselines, x 3 test sets), beside our counterpart read from the ``runs``
table alone (fold rows; no predictions, so a big store stays quick):

* ``linear_probe``: family ``probe``, head ``torch_linear`` (its parameters default to the model's own
  script, ``runner._paper_defaults``) on the outputs the paper concatenates (``Recipe.paper_outputs``,
  e.g. CLS for UNI, CLS + patch mean for Virchow), without TTA;
* ``lora``: family ``finetune``, head ``lora``; ``end_to_end``: family ``finetune``, head ``full``;

each on the model's recipe (``PAPER_MODEL_NAMES``: ``uni.hf``, ..., ``efficientnetv2_m.random``, which the
paper trains from scratch).

The rule (``RULE``): Δ = our mean balanced accuracy − the paper's, both over the five fold models with
the population std (ddof = 0, the paper's notebooks). **reproduced** when |Δ| <= √(σ_paper² + σ_ours²),
the two fold spreads combined; otherwise **above** or **below**. Welch's t-test p-value (from the two
means, stds and fold-model counts, each std turned into the sample std first) is shown beside it for
context, never used for the verdict. A family run with several seeds (``probe --seeds``) pools the fold
models of all its repeats, as the leaderboard does.

A run decides a verdict only with the paper's settings: five fold models, and for a probe the paper's
outputs, no TTA, the script's parameters, trained on AMi-Br; for fine-tuning empty ``options`` (this
model's script, ``FinetuneConfig.options``) and no test-only ``overrides``. Any other run is shown as
"not comparable: <why>". Runs of the random-weight twins (``<stem>.random`` of a foundation model: a dry run
of the pipeline) are shown as "dry run (random weights)". Which run a cell shows: the latest family with
the paper's settings, else the latest other run of the real model, else the twin's, else "not run".
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy.stats import ttest_ind_from_stats

from mitoprobe import embedder
from mitoprobe.paper import END_TO_END, FOUNDATION, PAPER_MODEL_NAMES, paper_probe_params, paper_results

from .features import POOLINGS
from .labels import family_label, options_text, without_name
from .protocol import PAPER_TRAIN, TEST_SETS
from .runs import read_runs

RULE = ("reproduced when |Δ| ≤ √(σ_paper² + σ_ours²): Δ = our mean balanced accuracy − the paper's, σ = the "
        "population std (ddof 0) over the five fold models; otherwise above / below. Welch's t-test p "
        "(equal_var=False, stds turned into sample stds) is context, not the verdict.")
N_FOLDS = 5
# the paper's method -> our (family, head)
METHODS = {"linear_probe": ("probe", "torch_linear"), "lora": ("finetune", "lora"), "end_to_end": ("finetune", "full")}
METHOD_NAMES = {"linear_probe": "linear probe", "lora": "LoRA", "end_to_end": "end-to-end"}
STATUSES = ("reproduced", "above", "below", "not comparable", "dry run", "not run")
DRY_RUN = "dry run (random weights)"
_TOL = 1e-12  # |Δ| equal to the spread (up to rounding) counts as reproduced
_RECIPES = {paper: recipe for recipe, paper in PAPER_MODEL_NAMES.items()}
_STEMS = FOUNDATION + END_TO_END  # the table's model order
COLUMNS = ["model", "method", "test_set", "paper_balanced_accuracy_mean", "paper_balanced_accuracy_std",
           "paper_auroc_mean", "paper_auroc_std", "paper_source", "recipe", "ours_model", "family_id", "label",
           "n_folds", "n_fold_models", "balanced_accuracy_mean", "balanced_accuracy_std", "auroc_mean", "auroc_std",
           "delta", "spread", "welch_p", "status", "verdict"]
_OURS = ["ours_model", "family_id", "label", "n_folds", "n_fold_models", "balanced_accuracy_mean",
         "balanced_accuracy_std", "auroc_mean", "auroc_std"]  # the columns a cell takes from our run


def twin_of(recipe: str) -> str | None:
    """The random-weight twin of a foundation model's recipe (``uni.hf`` -> ``uni.random``), else None."""
    stem = recipe.split(".")[0]
    return f"{stem}.random" if stem in FOUNDATION and recipe != f"{stem}.random" else None


def welch_p(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> float:
    """Welch's two-sided t-test p from two population stds (ddof 0, as reported); NaN where undefined."""
    if n_a < 2 or n_b < 2 or not (std_a > 0 or std_b > 0):
        return math.nan
    sample = lambda s, n: s * math.sqrt(n / (n - 1))  # noqa: E731  ttest_ind_from_stats takes sample stds
    return float(ttest_ind_from_stats(mean_a, sample(std_a, n_a), n_a, mean_b, sample(std_b, n_b), n_b,
                                      equal_var=False).pvalue)


def judge(delta: float, spread: float) -> str:
    """``RULE``: reproduced within the combined fold spread, else above / below."""
    return "reproduced" if abs(delta) <= spread + _TOL else ("above" if delta > 0 else "below")


def _json(text) -> dict:
    try:
        out = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _probe_differences(model: str, options: dict, config: dict) -> list[str]:
    """How a probe family differs from the paper's probe of ``model`` (empty: the paper's settings)."""
    why = []
    recipe = embedder.get_recipe(model)  # one of the paper's models or its twin: registered
    pooling = options.get("pooling", "all")
    outputs = POOLINGS.get(pooling) or [k for k, _ in recipe.outputs]
    if set(outputs) != set(recipe.paper_outputs):
        why.append(f"pooling={pooling} (the paper: {'+'.join(recipe.paper_outputs)})")
    if options.get("tta"):
        why.append("tta")
    rest = {k: v for k, v in options.items() if k not in ("pooling", "tta", "views", "name")}
    if rest:
        why.append(options_text(json.dumps(rest)))
    params, want = config.get("params") or {}, paper_probe_params(recipe.family)
    if params != want:  # a key left out is the head's default: the published value
        why.append("params " + ", ".join(f"{k}={params.get(k, 'default')} (the script: {want.get(k, 'default')})"
                                         for k in sorted(set(params) | set(want)) if params.get(k) != want.get(k)))
    train_on = (config.get("protocol") or {}).get("train_on")
    if train_on and train_on != PAPER_TRAIN:
        why.append(f"trained on {train_on}")
    if config.get("head_source"):
        why.append("an own head")
    return why


def _finetune_differences(options: dict, config: dict) -> list[str]:
    """How a fine-tuning family differs from its model's script (empty: the paper's settings)."""
    why = [options_text(json.dumps(options)) or "options set"] if options else []
    if config.get("overrides"):
        why.append("test-only overrides")
    return why


def _our_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (family, test set) of the candidate runs: fold statistics and what differs from the paper."""
    folds = runs[runs["fold"] >= 0]
    if folds.empty:
        return pd.DataFrame()
    g = folds.groupby(["family_id", "test_set"])
    stats = pd.DataFrame({
        "n_folds": g["fold"].nunique(), "n_fold_models": g.size(),
        "balanced_accuracy_mean": g["balanced_accuracy"].mean(),
        "balanced_accuracy_std": g["balanced_accuracy"].std(ddof=0),
        "auroc_mean": g["auroc"].mean(), "auroc_std": g["auroc"].std(ddof=0)}).reset_index()
    first = folds.sort_values("created_at").drop_duplicates("family_id", keep="first").set_index("family_id")
    latest = folds.groupby("family_id")["created_at"].max()
    fams = {}
    for fid, row in first.iterrows():
        options, config = _json(without_name(row["options"])), _json(row["config_json"])
        why = (_probe_differences(row["model"], options, config) if row["family"] == "probe"
               else _finetune_differences(options, config))
        fams[fid] = dict(ours_model=row["model"], family=row["family"], head=row["head"], why=why,
                         created_at=latest[fid], label=family_label({**row.to_dict(), "family_id": fid}))
    return stats.join(pd.DataFrame.from_dict(fams, orient="index"), on="family_id")


def _pick(cands: pd.DataFrame, recipe: str) -> pd.Series | None:
    """The run a cell shows: the paper's settings first, then any run of the real model, then the twin's;
    the latest first within each."""
    if cands.empty:
        return None
    rank = np.where(cands["ours_model"] != recipe, 2,
                    np.where([bool(w) or n < N_FOLDS for w, n in zip(cands["why"], cands["n_folds"])], 1, 0))
    order = cands.assign(_r=rank).sort_values(["_r", "created_at"], ascending=[True, False], kind="mergesort")
    return order.iloc[0]


def _verdict_of(ours: pd.Series, recipe: str, delta: float, spread: float) -> tuple[str, str]:
    """(status, verdict text) of the run a cell shows."""
    if ours["ours_model"] != recipe:
        return "dry run", DRY_RUN
    why = list(ours["why"]) + ([f"{ours['n_folds']} of {N_FOLDS} folds"] if ours["n_folds"] < N_FOLDS else [])
    if why:
        return "not comparable", "not comparable: " + "; ".join(why)
    status = judge(delta, spread)
    return status, status


def verdict(store) -> pd.DataFrame:
    """The verdict table (``COLUMNS``) of a store: :func:`verdict_table` of its ``runs`` table (nothing else
    is read)."""
    return verdict_table(read_runs(store))


def verdict_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per published paper row, in the paper's model order and the test sets' order, beside our
    run of it (``runs``: the runs table as ``runs.read_runs`` gives it)."""
    paper = paper_results()
    wanted = set(_RECIPES.values()) | {t for t in map(twin_of, _RECIPES.values()) if t}
    heads = set(METHODS.values())
    if len(runs):
        runs = runs[runs["model"].isin(wanted)
                    & pd.Series(list(zip(runs["family"], runs["head"])), index=runs.index).isin(heads)]
    cells = _our_cells(runs) if len(runs) else pd.DataFrame()
    rows = []
    for _, p in paper.iterrows():
        recipe = _RECIPES.get(p["model"], "")
        family, head = METHODS[p["family"]]
        r = dict(model=p["model"], method=p["family"], test_set=p["dataset"],
                 paper_balanced_accuracy_mean=p["balanced_accuracy_mean"],
                 paper_balanced_accuracy_std=p["balanced_accuracy_std"], paper_auroc_mean=p["auroc_mean"],
                 paper_auroc_std=p["auroc_std"], paper_source=p["source"], recipe=recipe)
        cands = (cells[(cells["family"] == family) & (cells["head"] == head) & (cells["test_set"] == p["dataset"])
                       & cells["ours_model"].isin({recipe, twin_of(recipe)})] if len(cells) else cells)
        ours = _pick(cands, recipe)
        if ours is None:
            rows.append(dict(r, status="not run", verdict="not run"))
            continue
        mean, std, n = ours["balanced_accuracy_mean"], ours["balanced_accuracy_std"], int(ours["n_fold_models"])
        delta = mean - p["balanced_accuracy_mean"]
        spread = math.hypot(p["balanced_accuracy_std"], std)
        status, text = _verdict_of(ours, recipe, delta, spread)
        rows.append(dict(r, **{c: ours[c] for c in _OURS}, delta=delta, spread=spread, status=status, verdict=text,
                         welch_p=welch_p(mean, std, n, p["balanced_accuracy_mean"], p["balanced_accuracy_std"],
                                         N_FOLDS)))
    out = pd.DataFrame(rows, columns=COLUMNS)
    sets = list(TEST_SETS)
    rank = pd.DataFrame({"m": [list(METHODS).index(m) for m in out["method"]],
                         "o": [_model_rank(m) for m in out["model"]],
                         "t": [sets.index(t) if t in sets else len(sets) for t in out["test_set"]]})
    return out.iloc[rank.sort_values(["m", "o", "t"], kind="mergesort").index].reset_index(drop=True)


def _model_rank(paper_model: str) -> int:
    stem = _RECIPES.get(paper_model, "").split(".")[0]
    return _STEMS.index(stem) if stem in _STEMS else len(_STEMS)


def summary(df: pd.DataFrame) -> pd.Series:
    """How many cells have each status (``STATUSES``, zeros included)."""
    return df["status"].value_counts().reindex(list(STATUSES), fill_value=0)


def summary_text(df: pd.DataFrame) -> str:
    """The summary in one line, e.g. ``3 reproduced, 1 above, 0 below, ... of 51 cells``."""
    return ", ".join(f"{n} {s}" for s, n in summary(df).items()) + f" (of {len(df)} published cells)"


def _pm(mean, std, n=None) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:.3f} ± {std:.3f}" + (f" ({int(n)})" if n is not None and pd.notna(n) else "")


def _num(v, fmt: str) -> str:
    return "" if pd.isna(v) else format(v, fmt)


def format_verdict(df: pd.DataFrame, compact: bool = False) -> pd.DataFrame:
    """Strings for display: mean ± std (our fold-model count in brackets), Δ, spread, Welch p, the verdict,
    AUROC mean ± std, our run's label and the paper's source. ``compact`` (the terminal table): no AUROC, and
    each source as its notebook's file name (the repository goes underneath)."""
    sources = df["paper_source"].astype(str)
    out = pd.DataFrame({
        "model": df["model"], "method": df["method"].map(METHOD_NAMES), "test set": df["test_set"],
        "paper BA": [_pm(m, s) for m, s in zip(df["paper_balanced_accuracy_mean"], df["paper_balanced_accuracy_std"])],
        "ours BA (n)": [_pm(m, s, n) for m, s, n in zip(df["balanced_accuracy_mean"], df["balanced_accuracy_std"],
                                                         df["n_fold_models"])],
        "Δ": [_num(v, "+.3f") for v in df["delta"]],
        "spread": [_num(v, ".3f") for v in df["spread"]],
        "Welch p": [_num(v, ".2g") for v in df["welch_p"]],
        "verdict": df["verdict"],
        "paper AUROC": [_pm(m, s) for m, s in zip(df["paper_auroc_mean"], df["paper_auroc_std"])],
        "ours AUROC": [_pm(m, s) for m, s in zip(df["auroc_mean"], df["auroc_std"])],
        "ours": ["" if pd.isna(v) else str(v) for v in df["label"]],
        "paper source": sources.str.rsplit("/", n=1).str[-1] if compact else sources,
    })
    return out.drop(columns=["paper AUROC", "ours AUROC"]) if compact else out
