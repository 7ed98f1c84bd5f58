"""Stored vectors of one embedding set as a probe sees them: ``load_features`` (the current recipe id
is mandatory, so stale vectors are refused) and ``Features.rows_of`` (every view of each patch).

Why its own module: the probe sweep, the refit of a recorded family (``refit``), ``predict`` and
``fusion`` all read vectors the same way; none of them should reach into the sweep for it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from mitoprobe import embedder
from mitoprobe.store.errors import ProtocolError, StoreError
from mitoprobe.store.hashing import config_hash
from mitoprobe.store.keys import as_arrow_ids, positions
from mitoprobe.store.memory import releasing

MOVE_ROWS = 4096  # rows moved at a time by ``Features.fold_matrices`` (the transient copy of one block)
POOLINGS = {"all": None, "cls": ["cls"], "mean": ["mean"], "both": ["cls", "mean"], "vector": ["vector"]}


@dataclass
class Features:
    """Vectors of one set, indexed by patch: ``rows_of(patch_ids)`` gives rows and owners."""

    name: str
    recipe_id: str
    keys: pd.DataFrame
    X: np.ndarray
    views: list[str]
    _ids: pa.Array = field(default=None, repr=False)  # each patch id once, in Arrow
    _order: np.ndarray = field(default=None, repr=False)  # rows grouped by patch
    _bounds: np.ndarray = field(default=None, repr=False)  # patch i's rows: _order[_bounds[i]:_bounds[i + 1]]
    # fine-tuned sets (finetune's fold checkpoints): the one fold whose split they may be probed under
    only_fold: int | None = None
    _moved: bool = field(default=False, repr=False)  # a fold's training rows are moved up (``fold_matrices``)

    def __post_init__(self):  # four arrays, not a dict of 200,000 small arrays (~40 MB at a cohort's size)
        views = self.keys["view"]
        if len(views) and (views == views.iloc[0]).all():  # one view (no TTA)
            self._index_rows()
            return
        codes, uniq = pd.factorize(self.keys["patch_id"])
        self._ids = as_arrow_ids(uniq)
        self._order = np.argsort(codes, kind="mergesort")
        self._bounds = np.searchsorted(codes[self._order], np.arange(len(uniq) + 1))

    def _index_rows(self) -> None:
        """Each row its own patch: no hashing, and the ids are the keys' own (zero-copy)."""
        self._ids = as_arrow_ids(self.keys["patch_id"])
        self._order = np.arange(len(self.keys))
        self._bounds = np.arange(len(self.keys) + 1)

    @property
    def _row_per_patch(self) -> bool:  # one view (no TTA) or one row for each patch
        return len(self._order) == len(self._bounds) - 1

    def locate(self, patch_ids) -> np.ndarray:
        """Each patch's position in the set (what ``rows_at`` takes); ``StoreError`` naming a patch it lacks.
        Looked up in Arrow: no Python string per patch (a lookup by pandas Index made two copies of a
        cohort's 200,000 ids as Python objects, kept for the Index's life)."""
        ids = as_arrow_ids(patch_ids)
        at = positions(ids, self._ids)
        if (at < 0).any():
            missing = ids.filter(pa.array(at < 0))
            raise StoreError(f"embedding set {self.name} lacks {len(missing)} patches (e.g. {missing[0].as_py()}); "
                             f"run `mitoprobe embed --model {self.name}` to complete it")
        return at

    def rows_at(self, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, index into ``at`` of each row) covering every view of the patches at ``at``."""
        if self._moved:
            raise RuntimeError(f"{self.name}: rows looked up while a fold's training rows are moved up (fold_matrices)")
        if self._row_per_patch:  # nothing to repeat
            return self._order[self._bounds[at]], np.arange(len(at))
        start, count = self._bounds[at], self._bounds[at + 1] - self._bounds[at]
        owner = np.repeat(np.arange(len(at)), count)
        offset = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)  # 0.. within each patch
        return self._order[np.repeat(start, count) + offset], owner

    def rows_of(self, patch_ids) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, index into ``patch_ids`` of each row) covering every view of each patch."""
        return self.rows_at(self.locate(patch_ids))

    @releasing  # the keys' old Arrow strings
    def put_first(self, at: np.ndarray) -> np.ndarray:
        """Reorder the rows (``X`` and ``keys`` alike) so that those of the patches at ``at`` come first, in
        ``at``'s order: a family's training patches, so that each fold's training rows are in increasing
        order and ``fold_matrices`` can move them up in place. One transient copy of ``X``, before any fit.
        Returns where ``at``'s patches are now: positions found before (``locate``) may no longer hold."""
        first = self.rows_at(at)[0]
        rest = np.setdiff1d(np.arange(len(self.X)), first, assume_unique=True)
        perm = np.concatenate([first, rest])
        if (perm == np.arange(len(perm))).all():
            return at
        self.X = self.X[perm]
        self.keys = self.keys.iloc[perm].reset_index(drop=True)
        if self._row_per_patch:  # the new keys' ids, not a second copy
            self._index_rows()
            return np.arange(len(at))
        new_row = np.empty_like(perm)
        new_row[perm] = np.arange(len(perm))
        self._order = new_row[self._order]
        return at

    @contextmanager
    def fold_matrices(self, tr_rows: np.ndarray, va_rows: np.ndarray, in_place: bool = True):
        """``(X_tr, X_va)`` of one fold, both read-only, without a copy of either when ``in_place`` and
        ``tr_rows`` increase (``put_first``): the training rows are moved up to the front of ``X`` for the fit,
        in blocks, and moved back when it ends, also when it fails (rows they overwrite are kept aside), so a
        fold never holds a copy of its training rows (~80% of the vectors: 36 MiB at 200,000 patches). When the
        fold's rows are exactly the first rows of ``X`` (one family's training patches after ``put_first``), the
        held-out rows are placed right after them and ``X_va`` is a view too. Otherwise, copies.

        ``in_place`` only for heads that keep no reference to the rows they fit on (their fitted model would
        read rows moved back); the caller knows its head (``fitting.fit_fold``)."""
        if self._moved:
            raise RuntimeError(f"{self.name}: fold_matrices does not nest")
        X_va = self.X[va_rows]
        X_va.flags.writeable = False
        n, m = len(tr_rows), len(va_rows)
        if (not in_place or n == 0 or tr_rows[0] < 0 or not self.X.flags.writeable
                or not (np.diff(tr_rows) > 0).all()):
            X_tr = self.X[tr_rows]
            X_tr.flags.writeable = False
            yield X_tr, X_va
            return
        # rows at positions < n that are not moved up are overwritten: the fold's held-out ones are in X_va
        # already, any other is kept aside here
        over = np.setdiff1d(np.arange(n), tr_rows, assume_unique=True)
        in_va = np.full(len(self.X), -1, np.int64)
        in_va[va_rows] = np.arange(m)
        from_va = in_va[over]
        aside_at = over[from_va < 0]
        aside = self.X[aside_at]
        packed = not len(aside_at) and _covers(tr_rows, va_rows, n + m)  # X[:n + m] is this fold's rows alone
        blocks = [(a, min(a + MOVE_ROWS, n)) for a in range(0, n, MOVE_ROWS)]
        moved = 0  # blocks moved up so far: only those are moved back
        placed = False  # the held-out rows are at X[n:n + m] (X_va's copy freed)
        self._moved = True
        try:
            for a, b in blocks:  # sources tr_rows[j] >= j: none is overwritten before it moves
                self.X[a:b] = self.X[tr_rows[a:b]]
                moved += 1
            X_tr = self.X[:n]
            X_tr.flags.writeable = False
            if packed:  # X[n:n + m] now holds training rows moved up and held-out rows, all in a copy
                self.X[n:n + m] = X_va
                placed = True
                X_va = self.X[n:n + m]
                X_va.flags.writeable = False
            yield X_tr, X_va
        finally:
            if placed:
                X_va = self.X[n:n + m].copy()
            for a, b in reversed(blocks[:moved]):  # back, last block first: the same argument reversed
                self.X[tr_rows[a:b]] = self.X[a:b].copy()
            if placed:
                self.X[va_rows] = X_va
            else:
                self.X[over[from_va >= 0]] = X_va[from_va[from_va >= 0]]
            self.X[aside_at] = aside
            self._moved = False


def _covers(tr_rows: np.ndarray, va_rows: np.ndarray, n: int) -> bool:
    """Whether the rows ``tr_rows`` and ``va_rows`` are 0..n-1, each once."""
    if len(tr_rows) + len(va_rows) != n or (len(va_rows) and (va_rows.min() < 0 or va_rows.max() >= n)) \
            or (len(tr_rows) and tr_rows[-1] >= n):
        return False
    seen = np.zeros(n, bool)
    seen[tr_rows] = True
    seen[va_rows] = True
    return bool(seen.all())


def current_recipe_id(store, model: str) -> str:
    """The recipe id ``model`` has now, from the embedder's registry or a registered resolver (fine-tuned
    folds). Mandatory: a name nothing resolves raises RecipeError, never "use the newest stored set"."""
    return embedder.recipe_id_of(model, store_root=store.root)


def load_features(store, model: str, pooling: str = "all", tta: bool = False, recipe_id: str | None = None,
                  allow_stale: bool = False) -> Features:
    """One set's vectors; ``"a+b"`` concatenates sets ``a`` and ``b`` per (patch, view) (e.g. a fine-tuned
    fold's vectors with the handcrafted features; ``pooling`` applies to each part that has the outputs)."""
    if "+" in model:
        return _concat_features(store, model, pooling, tta, allow_stale)
    if pooling not in POOLINGS:
        raise ProtocolError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
    recipe_id = recipe_id or current_recipe_id(store, model)
    eset = store.features.resolve(model, recipe_id, allow_stale)
    outputs = POOLINGS[pooling]
    if outputs and any(o not in eset.outputs for o in outputs):
        raise ProtocolError(f"set {model} has outputs {list(eset.outputs)}; pooling {pooling!r} needs {outputs}")
    keys, X = store.features.read(model, eset.recipe_id, outputs=outputs, views=None if tta else ["none"],
                                  allow_stale=True)
    if len(keys) == 0:
        raise StoreError(f"set {model} has no original-view ('none') vectors")
    return Features(model, eset.recipe_id, keys, np.ascontiguousarray(X, dtype=np.float32),
                    sorted(keys["view"].unique()),
                    only_fold=_finetune_fold(eset.provenance))


def _concat_features(store, model: str, pooling: str, tta: bool, allow_stale: bool) -> Features:
    parts = [load_features(store, name, pooling if pooling in ("all", "vector") else "all", tta,
                           allow_stale=allow_stale) for name in model.split("+")]
    folds = {f.only_fold for f in parts} - {None}
    if len(folds) > 1:
        raise ProtocolError(f"{model}: parts come from different fine-tuned folds {sorted(folds)}")
    keys = parts[0].keys[["patch_id", "view"]].reset_index(drop=True)
    blocks = [parts[0].X]
    for f in parts[1:]:
        idx = pd.MultiIndex.from_frame(f.keys[["patch_id", "view"]]).get_indexer(pd.MultiIndex.from_frame(keys))
        if (idx < 0).any():
            raise StoreError(f"{model}: {f.name} lacks {(idx < 0).sum()} of {parts[0].name}'s (patch, view) rows")
        blocks.append(f.X[idx])
    rid = config_hash({"concat": [f.recipe_id for f in parts]})
    return Features(model, rid, keys, np.ascontiguousarray(np.hstack(blocks), dtype=np.float32),
                    sorted(keys["view"].unique()), only_fold=folds.pop() if folds else None)


def _finetune_fold(provenance: dict) -> int | None:
    """Vectors from fold k's fine-tuned checkpoint were trained on the other folds' patches: they may
    only be probed under fold k's split (None: any fold)."""
    k = (provenance.get("recipe") or {}).get("finetune_fold")
    return None if k is None or int(k) < 0 else int(k)




def patch_mean(p_rows: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Average row probabilities over each patch's views (TTA); identity with one view."""
    return np.bincount(owner, weights=p_rows, minlength=n) / np.bincount(owner, minlength=n)
