"""For each patch of a dataset, its k nearest labelled reference mitoses (by default AMi-Br's).

The search is the dashboard's: the set's LanceDB table, cosine distance on the vectors z-scored with
AMi-Br-train statistics (``FeatureStore.search``), restricted by a prefilter to the reference
patches, so exactly k labelled neighbours come back whenever k exist. Excluding the query's own
slide or dataset keeps a patch from finding its own slide-mates (near-copies that flatter a label).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from store.errors import ProtocolError, StoreError
from store.progress import progress as progress_bar

from .features import current_recipe_id

DEFAULT_REFERENCE = ("AMi-Br",)  # train + test: the benchmark's expert-labelled mitoses
NEIGHBOUR_FIELDS = ("patch_id", "dataset", "relpath", "slide", "label", "votes_atypical", "n_experts", "distance")


def _votes(ref: pd.DataFrame) -> pd.Series:
    """'2/3'-style count of experts voting atypical (empty when the patch has no votes)."""
    cols = [c for c in ref.columns if c.startswith("expert") and c.endswith("_atypical")]
    yes = ref[cols].fillna(False).astype(bool).sum(axis=1)
    n = ref["n_experts"].fillna(0).astype(int)
    return pd.Series(np.where(n > 0, yes.astype(str) + "/" + n.astype(str), ""), index=ref.index)


def nearest_labelled(store, model: str, dataset: str, k: int = 10, reference: tuple[str, ...] = DEFAULT_REFERENCE,
                     exclude_same_slide: bool = False, exclude_same_dataset: bool = False, output: str | None = None,
                     long: bool = False, progress: bool = False) -> pd.DataFrame:
    """One row per patch of ``dataset`` with its k nearest labelled ``reference`` patches
    (``nn1_patch_id``, ``nn1_label``, ``nn1_distance``, ...) and the share of them that are atypical;
    ``long=True`` gives one row per (query, neighbour) instead."""
    if k < 1:
        raise ProtocolError(f"--k {k}: ask for at least 1 neighbour")
    eset = store.features.resolve(model, current_recipe_id(store, model))
    output = output or next(iter(eset.outputs))
    patches = store.patches()
    queries = patches[patches["dataset"] == dataset]
    if queries.empty:
        raise StoreError(f"no patches of dataset {dataset!r} in the store (datasets: "
                         f"{sorted(patches['dataset'].unique())})")
    ref = patches[patches["dataset"].isin(reference) & patches["label"].notna()].set_index("patch_id")
    if ref.empty:
        raise StoreError(f"no labelled reference patches in {list(reference)}; import the benchmark first")
    ref["votes_atypical"] = _votes(ref)
    keys, X = store.features.read(model, eset.recipe_id, outputs=[output], views=["none"], require_complete=False)
    row_of = dict(zip(keys["patch_id"], range(len(keys))))
    missing = [p for p in queries["patch_id"] if p not in row_of]
    if missing:
        raise StoreError(f"set {model} lacks {len(missing)} patches of {dataset} (e.g. {missing[0]}); run "
                         f"`mitoprobe embed --model {model}` to embed them")
    search = store.features.searcher(eset, output)
    rows = []
    for q in progress_bar(queries.itertuples(index=False), total=len(queries), desc=f"search {model}",
                          unit="patch", enabled=progress):
        keep = np.ones(len(ref), dtype=bool)
        if exclude_same_dataset:
            keep &= (ref["dataset"] != q.dataset).to_numpy()
        if exclude_same_slide and isinstance(q.slide, str):
            keep &= ~((ref["dataset"] == q.dataset) & (ref["slide"] == q.slide)).to_numpy()
        keep &= (ref.index != q.patch_id)
        hits = search(X[row_of[q.patch_id]], k=k, among=ref.index[keep].tolist())
        if hits.empty:
            continue
        nb = ref.loc[hits["patch_id"]]
        for rank, (pid, dist) in enumerate(zip(hits["patch_id"], hits["distance"]), start=1):
            r = nb.loc[pid]
            rows.append(dict(query_patch_id=q.patch_id, query_relpath=q.relpath, query_label=q.label, rank=rank,
                             patch_id=pid, dataset=r["dataset"], relpath=r["relpath"], slide=r["slide"],
                             label=r["label"], votes_atypical=r["votes_atypical"], n_experts=r["n_experts"],
                             distance=float(dist)))
    tidy = pd.DataFrame(rows)
    base = dict(model=model, recipe_id=eset.recipe_id, output=output, standardized=True)
    if long:
        return tidy.assign(**base)
    return _wide(queries, tidy, k).assign(**base)


def _wide(queries: pd.DataFrame, tidy: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per query: its neighbours side by side (``nn<rank>_<field>``) and their atypical share."""
    out = queries[["patch_id", "dataset", "relpath", "slide", "label"]].reset_index(drop=True).copy()
    if tidy.empty:
        return out
    g = tidy.groupby("query_patch_id")
    out["n_neighbours"] = out["patch_id"].map(g.size()).fillna(0).astype(int)
    out["share_atypical"] = out["patch_id"].map(g["label"].apply(lambda s: float((s == "Atypical").mean())))
    by = tidy.set_index(["query_patch_id", "rank"])
    for rank in range(1, k + 1):
        for f in NEIGHBOUR_FIELDS:
            idx = pd.MultiIndex.from_arrays([out["patch_id"], np.full(len(out), rank)])
            out[f"nn{rank}_{f}"] = by[f].reindex(idx).to_numpy()
    return out
