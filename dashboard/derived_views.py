"""The embedding map's stored views (``store/derived.py``), read for its page in milliseconds.

A rerun costs a stat of each view file: whether a view is current is judged from its manifest (read
once per file version, cached) against the set's parts and the patches table's (cached on the
store's fingerprint). Nothing here computes a stored view on open: a missing, stale or damaged one
comes back with why, and ``build`` (the page's button) makes them as ``mitoprobe embed`` does
(``classifiers.derived.build``): the dashboard's one write, of derived files only, under the views'
own lock. UMAP, when umap-learn is installed, is not stored: ``umap_view`` computes it on demand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.classifiers import derived as compute
from mitoprobe.store import Fingerprint, derived
from mitoprobe.store.errors import DamagedStoreError

from . import data


@dataclass(frozen=True)
class View:
    """One view as the page may show it: ``frame`` only when ``state`` is "current"; ``key`` names that
    version of it (a cache key)."""

    state: str  # current | missing | stale | damaged
    why: str = ""
    frame: pd.DataFrame | None = None
    manifest: dict = field(default_factory=dict)
    key: tuple = ()

    @property
    def info(self) -> dict:
        return self.manifest.get("info") or {}

    @property
    def explained(self) -> list[float]:
        """A PCA map's share of the standardised variance on each axis ([] for UMAP)."""
        return (self.manifest.get("basis") or {}).get("explained", [])

    @property
    def axes(self) -> tuple[str, str]:
        if self.explained:
            return tuple(f"PC{i + 1} ({v:.1%} of variance)" for i, v in enumerate(self.explained))
        return ("UMAP 1", "UMAP 2")


def methods() -> list[str]:
    """PCA (stored with the set); UMAP too when umap-learn is installed (computed on demand)."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ["PCA"]
    return ["PCA", "UMAP"]


def projection(root: str, stamp_: Fingerprint, eset, output: str) -> View:
    """The stored PCA map of one output: ``frame`` has patch_id, x, y."""
    spec = next(s for s in derived.views(root, eset) if s.kind == "projection" and s.output == output)
    return _view(root, stamp_, eset, spec)


def robustness(root: str, stamp_: Fingerprint, eset) -> View:
    """The stored robustness index: ``frame`` has one row per k (``derived.K_MIN`` .. the largest the
    set's labelled patches allow), ``info`` the set's counts and, when there is no index, the reason."""
    spec = next(s for s in derived.views(root, eset) if s.kind == "robustness")
    return _view(root, stamp_, eset, spec)


def _view(root: str, stamp_: Fingerprint, eset, spec: derived.ViewSpec) -> View:
    try:
        st_ = spec.path.stat()
    except FileNotFoundError:
        return View("missing", "it has not been built")
    got = _read(str(spec.path), spec.kind, (st_.st_size, st_.st_mtime_ns, st_.st_ino))
    if isinstance(got, str):
        return View("damaged", got)
    frame, doc = got
    state = _state(root, stamp_.set(eset.recipe_id), stamp_.patches, eset.recipe_id)
    why = derived.freshness(doc, state, spec.reads_patches)
    if why:
        return View("stale", why, manifest=doc)
    return View("current", frame=frame, manifest=doc, key=(str(spec.path), st_.st_size, st_.st_mtime_ns, st_.st_ino))


@st.cache_data(show_spinner=False, max_entries=16)
def _state(root: str, set_key: tuple, patches_key: tuple, recipe_id: str) -> derived.SetState:
    st_ = data.open_store(root)
    return derived.set_state(st_, st_.features.get(recipe_id))


@st.cache_resource(show_spinner=False, max_entries=16)
def _read(path: str, kind: str, file_key: tuple) -> tuple[pd.DataFrame, dict] | str:
    """A view file, read and checked once per version (shared, never modified by a page); a damaged one
    is its one-line error."""
    spec = derived.ViewSpec(kind, Path(path))
    try:
        table, doc = derived.read(spec)
    except DamagedStoreError as exc:
        return str(exc)
    frame = table.to_pandas()
    if kind == "robustness":
        frame = frame.set_index("k")
    return frame, doc


def map_frame(root: str, stamp_: Fingerprint, view: View) -> pd.DataFrame:
    """A current map's points with the patches' dataset, split and label (``data.patch_index``), joined
    once per version of the view and of the patches table, shared (never copied: do not modify)."""
    return _joined(view.key, stamp_.patches, view.frame, data.patch_index(root, stamp_))


def drawn(frame: pd.DataFrame, points: int) -> pd.DataFrame:
    """The map points a page draws: all of ``frame``, or a fixed random sample of ``points`` of them (a browser
    draws a few thousand points fluently, not a cohort's 200,000)."""
    return frame.sample(points, random_state=0) if len(frame) > points else frame


def first_map_view(root: str, stamp_: Fingerprint, view: View) -> None:
    """Read what the embedding map first shows besides its points, into the page's caches: the thumbnails of its
    gallery (``data.MAP_GALLERY_SIZE`` of the ``data.MAP_POINTS`` drawn, seed 0)."""
    shown = drawn(map_frame(root, stamp_, view), data.MAP_POINTS)
    data.thumbnails(root, stamp_, data.gallery(root, stamp_, shown["patch_id"], data.MAP_GALLERY_SIZE, 0))


@st.cache_resource(show_spinner=False, max_entries=8)
def _joined(view_key: tuple, pkey: tuple, _xy: pd.DataFrame, _index: pd.DataFrame) -> pd.DataFrame:
    return _xy.merge(_index[["patch_id", "dataset", "split", "label"]], on="patch_id", how="left")


def build(root: str, recipe_id: str) -> list[Path]:
    """Build the set's missing or stale views now (the page's button): ``classifiers.derived.build`` on
    the store opened for writing, never waiting for another builder (``StoreLockedError`` names it)."""
    from mitoprobe.api import open as open_workspace

    return compute.build(open_workspace(root).store, recipe_id, wait_s=0)


def umap_view(root: str, stamp_: Fingerprint, recipe_id: str, output: str) -> View:
    """UMAP of the standardised vectors of one output, computed now (not stored: minutes on a cohort)."""
    keys, X = data.embedding_matrix(root, stamp_, recipe_id, output)
    key = ("umap", recipe_id, output, stamp_.set(recipe_id))
    return View("current", frame=_umap(key, keys, X), manifest=dict(recipe_id=recipe_id, output=output), key=key)


@st.cache_data(show_spinner="Computing the UMAP (not stored; minutes on a large set)…", max_entries=4)
def _umap(key: tuple, _keys: pd.DataFrame, _X: np.ndarray) -> pd.DataFrame:
    import umap  # optional: only offered when installed (not a dependency)

    sd = _X.std(axis=0)
    Z = (_X - _X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    xy = umap.UMAP(n_components=2, random_state=compute.SEED).fit_transform(Z)
    return pd.DataFrame({"patch_id": _keys["patch_id"].to_numpy(), "x": xy[:, 0], "y": xy[:, 1]})
