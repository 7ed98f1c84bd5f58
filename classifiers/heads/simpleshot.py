"""SimpleShot: the nearest class prototype after centring and L2 normalisation."""

from __future__ import annotations

import numpy as np

from .base import ValPipeline, _BinaryHead, _sigmoid, _unit_rows
from .registry import register_head


class SimpleShot(_BinaryHead):
    """Nearest class prototype (SimpleShot): centre by the training mean, L2-normalise, average each
    class; P(positive) is a logistic of the squared-distance difference (``temperature``)."""

    def __init__(self, temperature=10.0):
        self.temperature = temperature

    def _unit(self, X):
        return _unit_rows(X - self.mean_)

    def fit(self, X, y, X_val=None, y_val=None):
        X, y01, _, _ = self._encode(X, y, None, None)
        self.mean_ = X.mean(axis=0)
        Z = self._unit(X)
        self.prototypes_ = np.stack([Z[y01 == c].mean(axis=0) for c in (0, 1)])
        return self

    def _scores(self, X):
        Z = self._unit(X)
        d = ((Z[:, None, :] - self.prototypes_[None]) ** 2).sum(axis=2)
        return _sigmoid(self.temperature * (d[:, 0] - d[:, 1]))


@register_head("simpleshot", sweep_order=3)
def simpleshot(**params):
    """Nearest class prototype (``SimpleShot``)."""
    return ValPipeline([("clf", SimpleShot(**params))])
