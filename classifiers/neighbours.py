"""For each query (a dataset's patches, stored ids or raw vectors), its k nearest labelled reference mitoses
(by default AMi-Br's): ``search``, under ``mitoprobe search``, ``Workspace.search`` and the dashboard.

The search is the set's LanceDB table, cosine distance on the vectors z-scored with AMi-Br-train
statistics, all queries in batches (``store.features.Searcher.nearest``): exactly k allowed neighbours come
back whenever k exist. Excluding the query's own
slide or dataset keeps a patch from finding its own slide-mates (near-copies that flatter a label).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mitoprobe.store.errors import DataError, ProtocolError, StoreError
from mitoprobe.store.schema import VOTE_COLUMNS

from .features import current_recipe_id

DEFAULT_REFERENCE = ("AMi-Br",)  # train + test: the benchmark's expert-labelled mitoses
NEIGHBOUR_FIELDS = ("patch_id", "dataset", "relpath", "slide", "label", "votes_atypical", "n_experts", "distance")


def _votes(ref: pd.DataFrame) -> pd.Series:
    """'2/3'-style count of experts voting atypical (empty when the patch has no votes)."""
    cols = [c for c in ref.columns if c.startswith("expert") and c.endswith("_atypical")]
    yes = ref[cols].fillna(False).astype(bool).sum(axis=1)
    n = ref["n_experts"].fillna(0).astype(int)
    return pd.Series(np.where(n > 0, yes.astype(str) + "/" + n.astype(str), ""), index=ref.index)


def search(store, model: str, queries, k: int = 10, *, reference: tuple[str, ...] | None = DEFAULT_REFERENCE,
           exclude_same_slide: bool = False, exclude_same_dataset: bool = False, output: str | None = None,
           long: bool = True, allow_stale: bool = False) -> pd.DataFrame:
    """The k nearest stored patches of each of many queries, in one call (``mitoprobe search``).

    ``queries``: a dataset name (each of its patches), a list of stored patch ids, or a 2-D array of raw
    vectors of the set's ``output`` (uploads: no slide or dataset of their own). Neighbours are the
    labelled patches of the ``reference`` datasets (None: every patch of the set), never the query
    itself, optionally not from its slide or dataset. The dashboard's search (cosine distance between
    vectors z-scored with the AMi-Br-train statistics): the set's LanceDB table opened once and the queries
    searched in batches, filtered with array operations (``Searcher.nearest``: exact, whatever the batch).
    ``long`` (the default): one row per (query, neighbour), ``query`` = the query's position in
    ``queries``; else one row per query with its neighbours side by side (``nn<rank>_<field>``)."""
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ProtocolError(f"k={k!r}: ask for at least 1 neighbour")
    eset = store.features.resolve(model, current_recipe_id(store, model), allow_stale)
    output = output or next(iter(eset.outputs))
    if output not in eset.outputs:
        raise StoreError(f"set {model} has outputs {list(eset.outputs)}, not {output!r}")
    meta = store.patches(columns=["patch_id", "dataset", "slide", "label"])  # what picks candidates; the rest
    qmeta, Q = _queries(store, eset, output, meta, queries)                  # is read for queries and hits only
    if qmeta is not None:
        qmeta = qmeta.merge(store.patches(["patch_id", "relpath"], patch_ids=qmeta["patch_id"]), on="patch_id",
                            how="left")
    if qmeta is None and (exclude_same_slide or exclude_same_dataset):
        raise ProtocolError("query vectors have no slide or dataset of their own to exclude: pass stored patch "
                            "ids (or a dataset) as queries, or drop exclude_same_slide / exclude_same_dataset")
    ref = meta if reference is None else meta[meta["dataset"].isin(list(reference)) & meta["label"].notna()]
    if ref.empty:
        raise StoreError(f"no labelled reference patches in {list(reference)}; import the benchmark first")
    ref = ref.set_index("patch_id")
    same = []
    if exclude_same_dataset:
        same.append((qmeta["dataset"].tolist(), ref["dataset"]))
    if exclude_same_slide:
        same.append((_slide_keys(qmeta).tolist(), _slide_keys(ref)))
    hits = store.features.searcher(eset, output).nearest(
        Q, k, candidates=None if reference is None else ref.index, same=same,
        query_ids=None if qmeta is None else qmeta["patch_id"])
    nb = store.patches(["patch_id", "dataset", "relpath", "slide", "label", "n_experts", *VOTE_COLUMNS],
                       patch_ids=hits["patch_id"].unique()).set_index("patch_id").reindex(hits["patch_id"])
    q = hits["query"].to_numpy()
    of_query = (lambda c: qmeta[c].to_numpy()[q]) if qmeta is not None else (lambda c: np.full(len(q), None))
    tidy = pd.DataFrame({
        "query": q, "query_patch_id": of_query("patch_id"), "query_relpath": of_query("relpath"),
        "query_label": of_query("label"), "rank": hits["rank"].to_numpy(), "patch_id": hits["patch_id"].to_numpy(),
        **{c: nb[c].to_numpy() for c in ("dataset", "relpath", "slide", "label")},
        "votes_atypical": _votes(nb).to_numpy(), "n_experts": nb["n_experts"].to_numpy(),
        "distance": hits["distance"].to_numpy(np.float64)})
    base = dict(model=model, recipe_id=eset.recipe_id, output=output, standardized=True)
    if long:
        return tidy.assign(**base)
    if qmeta is None:  # one row per query vector: its position stands in for a patch id
        qmeta = pd.DataFrame({"patch_id": np.arange(len(Q)), **{c: None for c in ("dataset", "relpath", "slide",
                                                                                   "label")}})
        return _wide(qmeta, tidy.assign(query_patch_id=q), k).rename(columns={"patch_id": "query"}).assign(**base)
    return _wide(qmeta, tidy, k).assign(**base)


def _queries(store, eset, output: str, meta: pd.DataFrame, queries) -> tuple[pd.DataFrame | None, np.ndarray]:
    """``Workspace.search``'s queries: (their patch metadata, their raw vectors); metadata None for vectors."""
    if isinstance(queries, np.ndarray) and queries.dtype.kind in "fiu":
        Q = np.atleast_2d(queries).astype(np.float32)
        if Q.ndim != 2 or Q.shape[1] != eset.outputs[output]:
            raise DataError(f"query vectors of shape {queries.shape}: set {eset.name}'s output {output} has "
                            f"{eset.outputs[output]} dimensions (one row per query)")
        return None, Q
    if isinstance(queries, str):
        qmeta = meta[meta["dataset"] == queries]
        if qmeta.empty:
            raise StoreError(f"no patches of dataset {queries!r} in the store (datasets: "
                             f"{sorted(meta['dataset'].unique())})")
    else:
        ids = [str(p) for p in queries]
        qmeta = meta.set_index("patch_id").reindex(ids).reset_index()
        unknown = qmeta.loc[qmeta["dataset"].isna(), "patch_id"].tolist()
        if unknown:
            raise StoreError(f"{len(unknown)} query patch id(s) are not stored (e.g. {unknown[0]!r})")
    qmeta = qmeta.reset_index(drop=True)
    return qmeta, store.features.vectors(eset, qmeta["patch_id"].tolist(), output)


def _slide_keys(meta: pd.DataFrame) -> pd.Series:
    """Each patch's slide as a key unique across datasets (missing when its slide is not recorded)."""
    key = meta["dataset"].astype(str) + "\x1f" + meta["slide"].astype("string")
    return key.where(meta["slide"].notna(), None).astype(object)


def _wide(queries: pd.DataFrame, tidy: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per query: its neighbours side by side (``nn<rank>_<field>``) and their atypical share."""
    out = queries[["patch_id", "dataset", "relpath", "slide", "label"]].reset_index(drop=True).copy()
    if tidy.empty:
        return out
    g = tidy.groupby("query_patch_id")
    out["n_neighbours"] = out["patch_id"].map(g.size()).fillna(0).astype(int)
    out["share_atypical"] = out["patch_id"].map(g["label"].apply(lambda s: float((s == "Atypical").mean())))
    by = tidy.set_index(["query_patch_id", "rank"])
    cols = {}
    for rank in range(1, k + 1):
        idx = pd.MultiIndex.from_arrays([out["patch_id"], np.full(len(out), rank)])
        for f in NEIGHBOUR_FIELDS:
            cols[f"nn{rank}_{f}"] = by[f].reindex(idx).to_numpy()
    return pd.concat([out, pd.DataFrame(cols, index=out.index)], axis=1)  # at once: no fragmented frame
