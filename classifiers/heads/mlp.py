"""A small class-balanced MLP (scikit-learn's), after standardisation and a cheap PCA."""

from __future__ import annotations

from sklearn.preprocessing import StandardScaler

from .base import ReducePCA, ValPipeline, _balanced_weights, _BinaryHead
from .registry import register_head


class BalancedMLP(_BinaryHead):
    """A small MLP (scikit-learn's, one hidden layer) trained with class-balancing sample weights
    and early stopping on an internal split of the training rows."""

    def __init__(self, hidden=64, alpha=1e-3, learning_rate_init=1e-3, max_iter=200, random_state=0):
        self.hidden = hidden
        self.alpha = alpha
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        from sklearn.neural_network import MLPClassifier

        X, y01, _, _ = self._encode(X, y, None, None)
        early = len(y01) >= 50
        self.mlp_ = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                  learning_rate_init=self.learning_rate_init, max_iter=self.max_iter,
                                  early_stopping=early, n_iter_no_change=10, random_state=self.random_state)
        self.mlp_.fit(X, y01, sample_weight=_balanced_weights(y01))
        self.n_iter_ = self.mlp_.n_iter_
        return self

    def _scores(self, X):
        return self.mlp_.predict_proba(X)[:, 1]


@register_head("mlp", sweep_order=4)
def mlp(pca=64, **params):
    """Standardise, PCA to ``pca`` dimensions (0: none), then ``BalancedMLP``."""
    steps = [("scale", StandardScaler())]
    if pca:  # a cheap randomized PCA first: the MLP then trains on 64-d inputs in ~1 s
        steps.append(("pca", ReducePCA(n_components=pca)))
    return ValPipeline(steps + [("clf", BalancedMLP(**params))])
