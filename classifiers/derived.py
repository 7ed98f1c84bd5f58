"""Compute an embedding set's derived views (``store/derived.py`` keeps and checks them): the embedding
map's 2-D PCA of each output, and the site-robustness index for every k its slider offers.

``build`` runs at the end of every ``mitoprobe embed`` (``Workspace.embed``: the CLI and the main job)
and behind the dashboard's build button; it makes a set's views current and leaves current ones
alone. Vectors are read part by part: memory is a block of ``BLOCK_ROWS`` rows, the neighbour search's
queries and the PCA's fit sample, never the whole set:

* **PCA, incremental.** The axes are fitted on the standardised vectors (mean and std of the fit
  sample) of a fixed-seed sample of at most ``PCA_FIT_ROWS`` rows (all rows below; a 2-D map's two
  leading directions are estimated well from 20,000), then every row is projected. When the set has
  only grown since (every part the view covered is still there) and holds at most ``REFIT_GROWTH``
  times the rows the axes were fitted on, only the new parts are projected onto the stored axes: the
  map does not jump when a cohort is added. Otherwise (a repaired set, or grown past that) it is
  refitted. Either way the view is current only when it covers exactly the set's parts now (every
  row projected); its manifest says what the axes were fitted on, and the page says so.
* **Robustness index** (``classifiers.robustness``: its z-scoring with AMi-Br-train statistics, its
  query sample of ``MAX_QUERIES`` patches and its counting), from one search of the ``K_MAX`` nearest
  neighbours: every k <= ``K_MAX`` is its prefix (exact search, ties broken deterministically). Over labelled patches
  only: a patch without a label is neither "same label" nor "other label", so unlabelled cohort
  patches are left out as queries and as neighbours (the manifest counts them). Recomputed in full
  whenever the set or the patches change (every patch's neighbours may change), at a cost linear in
  the set (at most ``MAX_QUERIES`` queries against every patch, streamed in blocks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from mitoprobe.store import derived
from mitoprobe.store.progress import progress as progress_bar

from . import robustness

log = logging.getLogger(__name__)

PCA_FIT_ROWS = 20_000  # rows the map's axes are fitted on at most (a fixed-seed sample above)
REFIT_GROWTH = 2.0  # refit the axes once the set holds more than this many times the rows they were fitted on
SEED = 0
BLOCK_ROWS = 16_384  # rows of the set the neighbour search holds at once (whole parts; 200 MB at 3,072-d)


def build(store, recipe_id: str, force: bool = False, progress: bool = False,
          wait_s: float = derived.LOCK_WAIT_S) -> list[Path]:
    """Make the derived views of set ``recipe_id`` current (``force``: rebuild every one, refitting the
    map's axes); returns the files written. A set a job is writing, or an unfinished one, is refused
    (``StoreError``); another process building the same views is waited for up to ``wait_s`` seconds
    (``StoreLockedError`` after)."""
    eset = store.features.get(recipe_id)
    derived.buildable(store, eset)
    lock = derived.lock(store.root, eset)
    lock.acquire(wait_s=wait_s, on_wait=lambda who: log.warning("waiting for %s, building the same views", who))
    try:
        state = derived.set_state(store, eset)
        todo = [(spec, derived.status(spec, state)) for spec in derived.views(store.root, eset)]
        todo = [(spec, s) for spec, s in todo if force or s.state != "current"]
        written = []
        for spec, s in progress_bar(todo, desc=f"map views {eset.name}", unit="view", enabled=progress and bool(todo)):
            if spec.kind == "projection":
                table, info = _projection(eset, state, spec, None if force else s)
            else:
                table, info = _robustness(store, eset, state)
            written.append(derived.write(spec, table, state, info))
        return written
    finally:
        lock.release()


# -- the map: PCA of the standardised vectors ---------------------------------------------------------
def _row_ids(eset, state) -> np.ndarray:
    ids = [pid for pid, _ in derived.iter_vectors(eset, state, [])]
    return np.concatenate(ids) if ids else np.empty(0, dtype=object)


def _gather(eset, state, outputs: list[str], rows: np.ndarray) -> np.ndarray:
    """The vectors of ``rows`` (sorted positions in the set's row order), float64, one pass."""
    out, at = [], 0
    for _, X in derived.iter_vectors(eset, state, outputs):
        lo = np.searchsorted(rows, at)
        hi = np.searchsorted(rows, at + len(X))
        out.append(X[rows[lo:hi] - at].astype(np.float64))
        at += len(X)
    return np.concatenate(out) if out else np.empty((0, sum(eset.outputs[o] for o in outputs)))


def fit_axes(Z: np.ndarray) -> dict:
    """PCA axes of standardised rows ``Z``: centre, two components, the variance share of each. Rows
    without variance (identical vectors, or one row) have no direction to show: zero axes, every
    point at the origin, 0% explained."""
    from sklearn.decomposition import PCA

    n, dim = Z.shape
    center, components, explained = Z.mean(axis=0), np.zeros((2, dim)), [0.0, 0.0]
    m = min(2, n - 1, dim)  # PCA needs more rows than components
    if m > 0 and Z.var(axis=0).sum() > 0:
        pca = PCA(n_components=m, random_state=SEED).fit(Z)
        center, components[:m] = pca.mean_, pca.components_
        explained[:m] = [float(v) for v in pca.explained_variance_ratio_]
    return dict(center=center.tolist(), components=components.tolist(), explained=explained)


def project(X: np.ndarray, basis: dict) -> np.ndarray:
    """Rows of raw vectors onto a stored basis: standardise, centre, two dot products (float32)."""
    Z = (np.asarray(X, np.float64) - np.asarray(basis["mean"])) / np.asarray(basis["scale"])
    return ((Z - np.asarray(basis["center"])) @ np.asarray(basis["components"]).T).astype(np.float32)


def _projection(eset, state: derived.SetState, spec: derived.ViewSpec, old: derived.Status | None
                ) -> tuple[pa.Table, dict]:
    prior = _prior(spec, state, old)
    if prior is not None:  # the set only grew: project the new parts onto the stored axes
        table, doc = prior
        basis = doc["basis"]
        covered = {tuple(p) for p in doc["parts"]}
        new = [name for name, size in state.parts if (name, size) not in covered]
        added = [_xy_table(ids, project(X, basis))
                 for ids, X in derived.iter_vectors(eset, state, [spec.output], parts=new)]
        n_added = sum(t.num_rows for t in added)
        if table.num_rows + n_added <= REFIT_GROWTH * basis["fit_of"]:
            return pa.concat_tables([table, *added]), dict(basis=basis, info=dict(doc["info"],
                                                                                   added=doc["info"]["added"] + n_added))
    ids = _row_ids(eset, state)
    n = len(ids)
    rows = np.arange(n) if n <= PCA_FIT_ROWS else np.sort(
        np.random.default_rng(SEED).choice(n, PCA_FIT_ROWS, replace=False))
    S = _gather(eset, state, [spec.output], rows)
    mean, sd = S.mean(axis=0), S.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)  # standardised: scale-free for handcrafted features too
    basis = dict(mean=mean.tolist(), scale=scale.tolist(), fit_rows=int(len(rows)), fit_of=int(n),
                 **fit_axes((S - mean) / scale))
    parts = [_xy_table(i, project(X, basis)) for i, X in derived.iter_vectors(eset, state, [spec.output])]
    table = pa.concat_tables(parts) if parts else derived.PROJECTION.empty_table()
    return table, dict(basis=basis, info=dict(model=eset.name, added=0))


def _xy_table(ids: np.ndarray, xy: np.ndarray) -> pa.Table:
    return pa.table({"patch_id": pa.array(ids.tolist(), pa.large_string()), "x": xy[:, 0], "y": xy[:, 1]})


def _prior(spec: derived.ViewSpec, state: derived.SetState, old: derived.Status | None
           ) -> tuple[pa.Table, dict] | None:
    """The stored map and its manifest when it is stale only because parts were added (every part it
    covered is still there, and it was made in this format): its axes may stay."""
    if old is None or old.state != "stale" or old.manifest.get("format") != derived.FORMAT:
        return None
    if not {tuple(p) for p in old.manifest["parts"]} <= set(state.parts):
        return None  # a part it covered is gone (a repair): refit
    table, doc = derived.read(spec)
    return (table, doc) if doc.get("basis") else None


# -- the robustness index for every k ------------------------------------------------------------------
def _robustness(store, eset, state: derived.SetState) -> tuple[pa.Table, dict]:
    outputs = list(eset.outputs)
    ids = _row_ids(eset, state)
    meta = store.patches(columns=["patch_id", "dataset", "split", "y"]).set_index("patch_id").reindex(ids)
    labelled = meta["y"].notna().to_numpy()
    info = dict(model=eset.name, output="+".join(outputs), rows=int(len(ids)), unlabelled=int((~labelled).sum()),
                reason=None)
    rows = np.flatnonzero(labelled)
    meta = meta[labelled]
    y = meta["y"].to_numpy(dtype=np.int64)
    site, names = pd.factorize(meta["dataset"])
    n = len(rows)
    if len(names) < 2:
        return _no_index(info, "it needs labelled patches from at least two datasets (sites); this set has "
                         f"{len(names)}")
    k_max = min(derived.K_MAX, n - 1)
    if k_max < derived.K_MIN:
        return _no_index(info, f"it needs more than {derived.K_MIN} labelled patches; this set has {n}")
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    fit = train if train.any() else np.ones(n, bool)  # as robustness.site_robustness standardises
    queries = np.arange(n) if n <= robustness.MAX_QUERIES else np.sort(
        np.random.default_rng(robustness.SAMPLE_SEED).choice(n, robustness.MAX_QUERIES, replace=False))
    F = _gather(eset, state, outputs, rows[fit])
    mean = F.mean(axis=0)
    sd = F.std(axis=0)
    scale = np.where(sd > 0, sd, 1.0)
    del F
    Q = _unit(_gather(eset, state, outputs, rows[queries]), mean, scale)
    nn = _nearest(Q, queries, _blocks(eset, state, outputs, labelled, mean, scale), k_max)
    table = pa.Table.from_pylist([dict(k=k, n=n, queries=len(queries),
                                       **robustness.robustness_index(y, site, nn[:, :k], queries))
                                  for k in range(derived.K_MIN, k_max + 1)], schema=derived.ROBUSTNESS)
    return table, dict(info=info)


def _no_index(info: dict, reason: str) -> tuple[pa.Table, dict]:
    """A current view that says why there is no index: the page says so without computing anything."""
    return derived.ROBUSTNESS.empty_table(), dict(info=dict(info, reason=reason))


def _unit(X: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Rows z-scored then scaled to unit length (cosine similarity = a dot product), float32."""
    Z = (np.asarray(X, np.float64) - mean) / scale
    return (Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _blocks(eset, state, outputs, labelled: np.ndarray, mean, scale):
    """(first row, unit rows) of the labelled rows in blocks of about ``BLOCK_ROWS`` (whole parts)."""
    buf, first, held, at = [], 0, 0, 0
    for _, X in derived.iter_vectors(eset, state, outputs):
        keep = labelled[at:at + len(X)]
        at += len(X)
        if keep.any():
            buf.append(_unit(X[keep], mean, scale))
            held += len(buf[-1])
        if held >= BLOCK_ROWS:
            yield first, np.concatenate(buf)
            buf, first, held = [], first + held, 0
    if buf:
        yield first, np.concatenate(buf)


def _nearest(Q: np.ndarray, queries: np.ndarray, blocks, k: int) -> np.ndarray:
    """Row indices (q, k) of each query's k most similar other rows, most similar first: each block's
    similarities (``robustness.SIM_CELLS`` at a time) are folded into a running top k per query, so
    memory is the queries, one block and the similarities, whatever the set's size."""
    best_s = np.full((len(Q), k), -np.inf, np.float32)
    best_i = np.full((len(Q), k), -1, np.int64)
    for first, B in blocks:
        step = max(1, robustness.SIM_CELLS // len(B))
        for a in range(0, len(Q), step):
            sim = Q[a:a + step] @ B.T
            own = queries[a:a + step] - first
            mine = np.flatnonzero((own >= 0) & (own < len(B)))
            sim[mine, own[mine]] = -np.inf  # not itself
            _fold(best_s[a:a + step], best_i[a:a + step], sim, first, k)
    order = np.lexsort((best_i, -best_s), axis=1)
    return np.take_along_axis(best_i, order, axis=1)


def _fold(best_s: np.ndarray, best_i: np.ndarray, sim: np.ndarray, first: int, k: int) -> None:
    """Fold one block's similarities (rows = queries, column j = row ``first + j``) into each query's k
    best, in place. Only a similarity above a query's k-th best can enter it; once the running top k
    is good (most of a large set) that is a few per query, found by one comparison; before (the first
    block), each query's k best of the block are picked first (``argpartition``)."""
    hit = np.flatnonzero(sim > best_s.min(axis=1)[:, None])
    if len(hit) > 2 * k * len(sim) and sim.shape[1] > k:
        c = np.argpartition(sim, sim.shape[1] - k, axis=1)[:, -k:].ravel()
        r = np.repeat(np.arange(len(sim)), k)
    else:
        r, c = np.divmod(hit, sim.shape[1])
    if not len(r):
        return
    rows = np.unique(r)
    row = np.concatenate([np.repeat(rows, k), r])
    val = np.concatenate([best_s[rows].ravel(), sim[r, c]])
    idx = np.concatenate([best_i[rows].ravel(), first + c])
    order = np.lexsort((idx, -val, row))  # by query, most similar first, then the lower row
    row, val, idx = row[order], val[order], idx[order]
    start = np.searchsorted(row, rows)
    rank = np.arange(len(row)) - np.repeat(start, np.diff(np.append(start, len(row))))
    keep = rank < k  # every query of ``rows`` has its k stored entries, so exactly k stay
    best_s[rows] = val[keep].reshape(len(rows), k)
    best_i[rows] = idx[keep].reshape(len(rows), k)
