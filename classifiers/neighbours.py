"""For each patch of a dataset, its k nearest labelled reference mitoses (by default AMi-Br's).

The search is the dashboard's: the set's LanceDB table, cosine distance on the vectors z-scored with
AMi-Br-train statistics (``FeatureStore.search``), restricted by a prefilter to the reference
patches, so exactly k labelled neighbours come back whenever k exist. Excluding the query's own
slide or dataset keeps a patch from finding its own slide-mates (near-copies that flatter a label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mitoprobe.store.errors import ProtocolError, StoreError
from mitoprobe.store.progress import progress as progress_bar

from .features import current_recipe_id

DEFAULT_REFERENCE = ("AMi-Br",)  # train + test: the benchmark's expert-labelled mitoses
OVERFETCH = (5, 50)  # batched searches fetch 5k, then 50k neighbours and keep the first k allowed ones
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
    reference = frozenset(ref.index)
    allowed = [_allowed(ref, reference, q, exclude_same_slide, exclude_same_dataset)
               for q in queries.itertuples(index=False)]
    hits = _search_all(search, X, [row_of[p] for p in queries["patch_id"]], allowed, k, progress)
    rows = []
    for q, found in zip(queries.itertuples(index=False), hits):
        nb = ref.loc[found["patch_id"]]
        for rank, (pid, dist) in enumerate(zip(found["patch_id"], found["distance"]), start=1):
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


@dataclass(frozen=True)
class _Allowed:
    """What one query may return: reference patches, less itself and (optionally) its slide or dataset."""

    reference: frozenset
    excluded: frozenset

    def __contains__(self, patch_id) -> bool:
        return patch_id in self.reference and patch_id not in self.excluded

    def __len__(self) -> int:
        return len(self.reference - self.excluded)

    def ids(self) -> list[str]:
        return sorted(self.reference - self.excluded)


def _allowed(ref: pd.DataFrame, reference: frozenset, q, exclude_same_slide: bool,
             exclude_same_dataset: bool) -> _Allowed:
    drop = {q.patch_id}
    if exclude_same_dataset:
        drop |= set(ref.index[ref["dataset"] == q.dataset])
    if exclude_same_slide and isinstance(q.slide, str):
        drop |= set(ref.index[(ref["dataset"] == q.dataset) & (ref["slide"] == q.slide)])
    return _Allowed(reference, frozenset(drop))


def _search_all(search, X: np.ndarray, rows: list[int], allowed: list[_Allowed], k: int, progress: bool,
                batch: int = 256) -> list[pd.DataFrame]:
    """Each query's k nearest allowed patches. Batched LanceDB searches over-fetch (``OVERFETCH``:
    5k, then 50k neighbours for queries still short, filtered here); a query left with fewer than k
    allowed hits is searched again alone with its allowed ids as a prefilter, which is exact (and
    ~0.2 s): the answer never depends on the shortcut. Neighbourhoods that follow the site (an
    AtNorM patch among AtNorM patches) are what makes the second tier necessary."""
    out: dict[int, pd.DataFrame] = {}
    todo = list(range(len(rows)))
    with progress_bar(total=len(rows), desc="search", unit="patch", enabled=progress) as bar:
        for factor in OVERFETCH:
            short = []
            for a in range(0, len(todo), batch):
                chunk = todo[a:a + batch]
                found = search.batch(X[[rows[i] for i in chunk]], k=k * factor)
                groups = dict(tuple(found.groupby("query")))
                for j, i in enumerate(chunk):
                    g = groups.get(j, found.iloc[:0])
                    g = g[[p in allowed[i] for p in g["patch_id"]]].sort_values("distance", kind="mergesort").head(k)
                    if len(g) < min(k, len(allowed[i])):
                        short.append(i)
                        continue
                    out[i] = g
                    bar.update(1)
            todo = short
        for i in todo:
            out[i] = search(X[rows[i]], k=k, among=allowed[i].ids())
            bar.update(1)
    return [out[i][["patch_id", "distance"]].reset_index(drop=True) for i in range(len(rows))]


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
