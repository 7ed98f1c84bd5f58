"""Cosine k-nearest neighbours with class-balanced votes."""

from __future__ import annotations

import numpy as np

from .base import ValPipeline, _BinaryHead, _unit_rows
from .registry import register_head


class CosineKNN(_BinaryHead):
    """Exact k-nearest neighbours by cosine similarity, votes weighted by inverse class frequency
    (so the minority class is not drowned). ``center`` subtracts the training mean first."""

    def __init__(self, n_neighbors=15, center=True, chunk_size=512):
        self.n_neighbors = n_neighbors
        self.center = center
        self.chunk_size = chunk_size

    def _unit(self, X):
        return _unit_rows(X - self.mean_ if self.center else X)

    def fit(self, X, y, X_val=None, y_val=None):
        X, y01, _, _ = self._encode(X, y, None, None)
        self.mean_ = X.mean(axis=0)
        self.train_ = self._unit(X).astype(np.float32)
        self.y_ = y01
        counts = np.bincount(y01, minlength=2).astype(np.float64)
        self.class_weight_ = counts.sum() / (2 * counts)
        return self

    def _scores(self, X):
        Q = self._unit(X).astype(np.float32)
        k = int(min(self.n_neighbors, len(self.y_)))
        out = np.empty(len(Q))
        for s in range(0, len(Q), self.chunk_size):
            sims = Q[s:s + self.chunk_size] @ self.train_.T
            nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            w = self.class_weight_[self.y_[nn]]
            out[s:s + self.chunk_size] = (w * self.y_[nn]).sum(axis=1) / w.sum(axis=1)
        return out


@register_head("knn", grid={"n_neighbors": [5, 15, 45, 135]}, sweep_order=2)
def knn(**params):
    """Cosine kNN (``CosineKNN``)."""
    return ValPipeline([("clf", CosineKNN(**params))])
