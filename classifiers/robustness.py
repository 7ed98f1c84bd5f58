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
whether either is above chance. Exact search (a matrix product), fine for benchmark-sized sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from store.errors import ProtocolError, RecipeError

from .runner import current_recipe_id

DEFAULT_K = 10
COLUMNS = ["model", "recipe_id", "output", "k", "n", "robustness_index", "label_agreement", "label_base_rate",
           "site_agreement", "site_base_rate", "sl_os", "ol_ss"]


def _zscore(X: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """Standardise with the statistics of ``fit_rows`` (the AMi-Br training patches) only."""
    mu = X[fit_rows].mean(axis=0)
    sd = X[fit_rows].std(axis=0)
    return (X - mu) / np.where(sd > 0, sd, 1.0)


def neighbours(X: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices (n, k) of each row's k nearest other rows by cosine similarity."""
    U = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    out = np.empty((len(U), k), dtype=np.int64)
    for a in range(0, len(U), chunk):
        sim = U[a:a + chunk] @ U.T
        sim[np.arange(sim.shape[0]), np.arange(a, a + sim.shape[0])] = -np.inf  # not itself
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="mergesort")
        out[a:a + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def robustness_index(labels: np.ndarray, sites: np.ndarray, nn: np.ndarray) -> dict:
    """The index and the agreements (with base rates) for neighbour table ``nn``."""
    labels, sites = np.asarray(labels), np.asarray(sites)
    same_label = labels[nn] == labels[:, None]
    same_site = sites[nn] == sites[:, None]
    sl_os = int((same_label & ~same_site).sum())
    ol_ss = int((~same_label & same_site).sum())

    def base(v):  # P(a random other patch shares v), averaged over patches
        _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
        return float(np.mean((counts[inv] - 1) / (len(v) - 1)))

    return dict(robustness_index=sl_os / (sl_os + ol_ss) if sl_os + ol_ss else float("nan"),
                label_agreement=float(same_label.mean()), label_base_rate=base(labels),
                site_agreement=float(same_site.mean()), site_base_rate=base(sites), sl_os=sl_os, ol_ss=ol_ss)


def site_robustness(store, model: str, output: str | None = None, k: int = DEFAULT_K,
                    allow_stale: bool = False) -> dict:
    """The index of one stored set over all patches (original view; site = dataset)."""
    eset = store.features.resolve(model, current_recipe_id(store, model), allow_stale)
    outputs = [output] if output else list(eset.outputs)
    if any(o not in eset.outputs for o in outputs):
        raise ProtocolError(f"set {model} has outputs {list(eset.outputs)}, not {output!r}")
    keys, X = store.features.read(model, eset.recipe_id, outputs=outputs, views=["none"], allow_stale=True)
    meta = store.patches(columns=["patch_id", "dataset", "split", "y"]).set_index("patch_id").loc[keys["patch_id"]]
    if meta["dataset"].nunique() < 2:
        raise ProtocolError("site robustness needs patches from at least two datasets (sites) in the store")
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    Z = _zscore(np.asarray(X, dtype=np.float64), train if train.any() else np.ones(len(meta), bool))
    res = robustness_index(meta["y"].to_numpy(), meta["dataset"].to_numpy(), neighbours(Z, k))
    return dict(model=model, recipe_id=eset.recipe_id, output="+".join(outputs), k=k, n=len(meta), **res)


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
