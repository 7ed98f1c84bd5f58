"""Do an embedding's neighbourhoods group mitoses by label, or by the site they come from?

The question behind AMi-Br -> AtNorM: a foundation model whose nearest neighbours share the
*dataset* (scanner, hospital, species) more than the *label* will not carry a probe to another site.
For every patch, its k nearest neighbours (cosine, on per-dimension z-scored vectors so no single
feature dominates) are counted as

* SL-OS: same label, other site   (the embedding generalises across sites), and
* OL-SS: other label, same site   (the site outweighs the biology),

and the robustness index is SL-OS / (SL-OS + OL-SS), in the spirit of PathoROB's (Kömen et al. 2025):
1 = neighbours follow the label regardless of site, 0 = they follow the site. Label and site agreement
are also reported against their base rates (what random neighbours would give), so a reader sees
whether either is above chance. Exact search (a matrix product). Above ``MAX_QUERIES`` patches (a
cohort-sized store) the counts come from a fixed-seed random sample of that many query patches, whose
neighbours are still searched among all patches: the cost grows linearly with the store, not with its
square (the result says how many patches were queried).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mitoprobe.store.errors import ProtocolError, RecipeError

from .runner import current_recipe_id

DEFAULT_K = 10
MAX_QUERIES = 10_000  # all patches up to this many (the benchmark's 6,573: exact); a sample above
SAMPLE_SEED = 0
COLUMNS = ["model", "recipe_id", "output", "k", "n", "queries", "robustness_index", "label_agreement", "label_base_rate",
           "site_agreement", "site_base_rate", "sl_os", "ol_ss"]


def _zscore(X: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """Standardise with the statistics of ``fit_rows`` (the AMi-Br training patches) only."""
    mu = X[fit_rows].mean(axis=0)
    sd = X[fit_rows].std(axis=0)
    return (X - mu) / np.where(sd > 0, sd, 1.0)


SIM_CELLS = 1 << 23  # similarities held at once (64 MB of float64): the query chunk shrinks as the set grows


def neighbours(X: np.ndarray, k: int, chunk: int | None = None, queries: np.ndarray | None = None) -> np.ndarray:
    """Indices (q, k) of the k nearest other rows by cosine similarity of each row in ``queries``
    (row indices; all rows when None). ``chunk`` queries at a time (default: as many as keep the
    similarity block within ``SIM_CELLS``, so memory does not grow with the set)."""
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    chunk = chunk or max(1, min(1024, SIM_CELLS // max(1, len(U))))
    rows = np.arange(len(U)) if queries is None else np.asarray(queries)
    out = np.empty((len(rows), k), dtype=np.int64)
    for a in range(0, len(rows), chunk):
        q = rows[a:a + chunk]
        sim = U[q] @ U.T
        sim[np.arange(len(q)), q] = -np.inf  # not itself
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="mergesort")
        out[a:a + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def robustness_index(labels: np.ndarray, sites: np.ndarray, nn: np.ndarray, queries: np.ndarray | None = None) -> dict:
    """The index and the agreements (with base rates over every patch) for neighbour table ``nn`` of
    the rows ``queries`` (all rows when None)."""
    labels, sites = np.asarray(labels), np.asarray(sites)
    q = np.arange(len(labels)) if queries is None else np.asarray(queries)
    same_label = labels[nn] == labels[q][:, None]
    same_site = sites[nn] == sites[q][:, None]
    sl_os = int((same_label & ~same_site).sum())
    ol_ss = int((~same_label & same_site).sum())

    def base(v):  # P(a random other patch shares v), averaged over patches
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        return float(np.mean((counts[inv] - 1) / (len(v) - 1)))

    return dict(robustness_index=sl_os / (sl_os + ol_ss) if sl_os + ol_ss else float("nan"),
                label_agreement=float(same_label.mean()), label_base_rate=base(labels),
                site_agreement=float(same_site.mean()), site_base_rate=base(sites), sl_os=sl_os, ol_ss=ol_ss)


def site_robustness(store, model: str, output: str | None = None, k: int = DEFAULT_K,
                    allow_stale: bool = False, max_queries: int = MAX_QUERIES) -> dict:
    """The index of one stored set over all labelled patches (original view; site = dataset), or over a
    fixed-seed sample of ``max_queries`` of them when there are more (``queries`` in the result)."""
    eset = store.features.resolve(model, current_recipe_id(store, model), allow_stale)
    outputs = [output] if output else list(eset.outputs)
    if any(o not in eset.outputs for o in outputs):
        raise ProtocolError(f"set {model} has outputs {list(eset.outputs)}, not {output!r}")
    keys, X = store.features.read(model, eset.recipe_id, outputs=outputs, views=["none"], allow_stale=True)
    meta = store.patches(columns=["patch_id", "dataset", "split", "y"]).set_index("patch_id").loc[keys["patch_id"]]
    labelled = meta["y"].notna().to_numpy()  # a lab's unlabelled patches have no label to agree with: left out
    meta, X = meta[labelled], np.asarray(X)[labelled]
    if meta["dataset"].nunique() < 2:
        raise ProtocolError("site robustness needs patches from at least two datasets (sites) in the store")
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    Z = _zscore(np.asarray(X, dtype=np.float64), train if train.any() else np.ones(len(meta), bool))
    queries = None
    if len(meta) > max_queries:
        queries = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(meta), max_queries, replace=False))
    res = robustness_index(meta["y"].to_numpy(), meta["dataset"].to_numpy(), neighbours(Z, k, queries=queries), queries)
    return dict(model=model, recipe_id=eset.recipe_id, output="+".join(outputs), k=k, n=len(meta),
                queries=len(meta) if queries is None else len(queries), **res)


def robustness_table(store, models: list[str] | None = None, k: int = DEFAULT_K) -> pd.DataFrame:
    """One row per complete embedding set (or per ``models``), best index first."""
    names = models or sorted({s.name for s in store.features.sets() if s.complete})
    rows = []
    for m in names:
        try:
            rows.append(site_robustness(store, m, k=k))
        except RecipeError:
            if models:  # asked for by name: say so; otherwise skip sets no recipe describes
                raise
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values("robustness_index", ascending=False, kind="mergesort").reset_index(drop=True)
