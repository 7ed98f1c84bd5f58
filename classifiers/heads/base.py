"""What every built-in head shares: binary label handling, a validation split, PCA and a Pipeline that
passes validation rows to its last step.

Our own heads follow the scikit-learn contract: ``__init__`` only stores its arguments, ``fit``
returns ``self``, learned state ends in ``_``.
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data


def _check_binary(estimator, X, y, reset=True):
    X, y = validate_data(estimator, X, y, reset=reset, dtype=np.float32)
    kind = type_of_target(y)
    if kind not in ("binary", "multiclass"):
        raise ValueError(f"Unknown label type: {kind}; heads are binary classifiers")
    classes = np.unique(y)
    if len(classes) > 2:
        raise ValueError(f"Only binary classification is supported; got {len(classes)} classes "
                         "(atypical vs normal)")
    if len(classes) < 2:
        raise ValueError("Classifier can't train when only one class is present.")
    return X, y, classes


def _balanced_weights(y01: np.ndarray) -> np.ndarray:
    counts = np.bincount(y01, minlength=2).astype(np.float64)
    return (len(y01) / (2 * counts))[y01]


def _holdout(y01: np.ndarray, random_state, frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """A stratified internal split when no validation rows are given (small data, sklearn checks)."""
    rng = np.random.default_rng(random_state)
    val = np.zeros(len(y01), bool)
    for c in (0, 1):
        idx = np.flatnonzero(y01 == c)
        n = max(1, int(round(frac * len(idx)))) if len(idx) > 1 else 0
        val[rng.permutation(idx)[:n]] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _unit_rows(Z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


class _BinaryHead(ClassifierMixin, BaseEstimator):
    """Shared plumbing: label encoding to 0/1 (classes_[1] is positive), predict from probabilities."""

    def _encode(self, X, y, X_val, y_val):
        X, y, self.classes_ = _check_binary(self, X, y)
        y01 = (y == self.classes_[1]).astype(np.int64)
        if X_val is not None:
            X_val = np.asarray(X_val, dtype=np.float32)
            y_val = (np.asarray(y_val) == self.classes_[1]).astype(np.int64)
        return X, y01, X_val, y_val

    def _scores(self, X) -> np.ndarray:  # P(classes_[1])
        raise NotImplementedError

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        p = np.clip(self._scores(X), 0.0, 1.0)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


class ReducePCA(TransformerMixin, BaseEstimator):
    """Randomized PCA to at most ``n_components``; passes inputs through when they are already that
    small (so one head definition serves 16-d tests and 2,560-d embeddings)."""

    def __init__(self, n_components=64, iterated_power=2, random_state=0):
        self.n_components = n_components
        self.iterated_power = iterated_power
        self.random_state = random_state

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self.pca_ = None
        if X.shape[1] > self.n_components and X.shape[0] > self.n_components:
            self.pca_ = PCA(n_components=self.n_components, svd_solver="randomized",
                            iterated_power=self.iterated_power, random_state=self.random_state).fit(X)
        return self

    def transform(self, X):
        check_is_fitted(self, "pca_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return X if self.pca_ is None else self.pca_.transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class ValPipeline(Pipeline):
    """A Pipeline whose last step may receive validation rows: ``fit(X, y, X_val=, y_val=)`` passes
    ``X_val`` through the fitted preprocessing steps before handing it to the final estimator."""

    def fit(self, X, y=None, X_val=None, y_val=None):
        Xt = X
        for _, step in self.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            Xt = step.fit_transform(Xt, y)
            if X_val is not None:
                X_val = step.transform(X_val)
        last = self.steps[-1][1]
        if X_val is not None and "X_val" in inspect.signature(last.fit).parameters:
            last.fit(Xt, y, X_val=X_val, y_val=y_val)
        else:
            last.fit(Xt, y)
        return self
