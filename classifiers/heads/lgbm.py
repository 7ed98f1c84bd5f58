"""LightGBM, class-balanced and early-stopped, tuned for speed on wide embeddings."""

from __future__ import annotations

import numpy as np

from .base import ReducePCA, ValPipeline, _BinaryHead, _holdout
from .registry import register_head


class LGBMHead(_BinaryHead):
    """LightGBM, class-balanced, early-stopped on the validation rows (the fold's held-out part).

    Made fast on 1,000-3,000-d inputs (measured, benchmarks/probe_sweep.py): ~128 columns per
    tree (``colsample_bytree=None``: 5% of 2,560), 15-bin histograms whose edges come from 1,000 sampled rows (binning 2,560 columns is
    most of the cost), early stopping, and ONE thread: on a busy 2-core machine OpenMP spin-waiting
    made 2 threads 30x slower. ``make_head("lgbm", pca=64)`` adds a PCA step."""

    def __init__(self, n_estimators=300, learning_rate=0.1, num_leaves=7, min_child_samples=20,
                 colsample_bytree=None, subsample=0.8, max_bin=15, reg_lambda=1.0, early_stopping_rounds=20,
                 bin_sample=1000, n_jobs=1, random_state=0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.colsample_bytree = colsample_bytree
        self.subsample = subsample
        self.max_bin = max_bin
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.bin_sample = bin_sample
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        import lightgbm as lgb

        X, y01, X_val, y_val = self._encode(X, y, X_val, y_val)
        if X_val is None and len(y01) >= 20:
            tr, va = _holdout(y01, self.random_state)
            X, y01, X_val, y_val = X[tr], y01[tr], X[va], y01[va]
        # default: ~128 columns per tree (5% of 2,560), all of them for small inputs
        colsample = self.colsample_bytree or min(1.0, 128 / X.shape[1])
        self.booster_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples, colsample_bytree=colsample,
            subsample=self.subsample, subsample_freq=1 if self.subsample < 1 else 0, max_bin=self.max_bin,
            reg_lambda=self.reg_lambda, class_weight="balanced", n_jobs=self.n_jobs,
            bin_construct_sample_cnt=self.bin_sample,
            random_state=self.random_state, verbose=-1)
        kw = {}
        if X_val is not None and len(np.unique(y_val)) == 2:
            kw = dict(eval_X=(X_val,), eval_y=(y_val,), eval_metric="auc",
                      callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)])
        self.booster_.fit(X, y01, **kw)
        self.best_iteration_ = int(self.booster_.best_iteration_ or self.n_estimators)
        return self

    def _scores(self, X):
        return self.booster_.predict_proba(X, num_iteration=self.best_iteration_)[:, 1]


@register_head("lgbm", uses_val=True, sweep_order=1)
def lgbm(pca=0, **params):
    """Optionally PCA to ``pca`` dimensions, then ``LGBMHead``."""
    steps = [("pca", ReducePCA(n_components=pca))] if pca else []
    return ValPipeline(steps + [("clf", LGBMHead(**params))])
