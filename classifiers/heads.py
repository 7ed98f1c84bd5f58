"""Classifier heads on frozen embeddings: scikit-learn estimators, one factory.

``make_head(name, **params)`` returns an unfitted estimator (often a :class:`ValPipeline`). Every
head has ``fit(X, y, X_val=None, y_val=None)`` and ``predict_proba``; heads that early-stop use the
validation rows they are given (the fold's held-out part) and otherwise split their own from the
training rows. ``HEADS[name]`` records, next to the factory, the small grid that the protocol
searches on the fold's held-out part and the default decision-threshold rule.

Our own heads follow the scikit-learn contract: ``__init__`` only stores its arguments, ``fit``
returns ``self``, learned state ends in ``_``. torch is imported inside ``fit`` only.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from mitoprobe.paper.probe import PAPER_PROBE_PARAMS, PAPER_SCRIPT_OVERRIDES, paper_probe_params
from mitoprobe.store.errors import ProtocolError

from .metrics import balanced_accuracy

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


class TorchLinearProbe(_BinaryHead):
    """The paper's linear probe, reproduced: one ``nn.Linear`` on raw features, BCE-with-logits,
    Adam, batches of 8 drawn by a class-balancing ``WeightedRandomSampler``, ReduceLROnPlateau on the
    validation balanced accuracy (mode max), early stop after ``patience`` epochs without
    improvement, and the best-validation weights restored."""

    def __init__(self, lr=PAPER_PROBE_PARAMS["lr"], weight_decay=PAPER_PROBE_PARAMS["weight_decay"],
                 batch_size=8, max_epochs=100, patience=15, lr_factor=0.5, lr_patience=3, min_lr=1e-7,
                 random_state=0):
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.min_lr = min_lr
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        import torch

        X, y01, X_val, y_val = self._encode(X, y, X_val, y_val)
        if X_val is None:
            tr, va = _holdout(y01, self.random_state)
            X, y01, X_val, y_val = X[tr], y01[tr], X[va], y01[va]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matmuls: threading only adds overhead
        try:
            self._fit_torch(torch, X, y01, X_val, y_val)
        finally:
            torch.set_num_threads(threads)
        return self

    def _fit_torch(self, torch, X, y01, X_val, y_val):
        from torch.utils.data import WeightedRandomSampler

        g = torch.Generator().manual_seed(int(self.random_state or 0))
        torch_rng_state = torch.get_rng_state()
        torch.manual_seed(int(self.random_state or 0))  # nn.Linear init; restored below
        model = torch.nn.Linear(X.shape[1], 1)
        torch.set_rng_state(torch_rng_state)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=self.lr_factor,
                                                           patience=self.lr_patience, min_lr=self.min_lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y01.astype(np.float32))[:, None]
        Xv = torch.from_numpy(X_val)
        counts = np.bincount(y01, minlength=2)
        weights = (1.0 / np.maximum(counts, 1))[y01]
        sampler = WeightedRandomSampler(torch.from_numpy(weights), len(weights), replacement=True, generator=g)
        best, best_state, stale, epochs = 0.0, None, 0, 0
        self.history_ = []
        for epoch in range(self.max_epochs):
            model.train()
            order = torch.tensor(list(sampler))
            for start in range(0, len(order), self.batch_size):
                b = order[start:start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(model(Xt[b]), yt[b])
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                pv = torch.sigmoid(model(Xv)).numpy().ravel()
            val_ba = balanced_accuracy(y_val, (pv > 0.5).astype(int))
            self.history_.append(val_ba)
            epochs = epoch + 1
            if val_ba > best:
                best, stale = val_ba, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
            sched.step(val_ba)
        if best_state is not None:
            model.load_state_dict(best_state)
        self.coef_ = model.weight.detach().numpy().ravel().astype(np.float64)
        self.intercept_ = float(model.bias.detach().numpy()[0])
        self.best_val_balanced_accuracy_ = best
        self.n_epochs_ = epochs

    def _scores(self, X):
        z = X.astype(np.float64) @ self.coef_ + self.intercept_
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


class CosineKNN(_BinaryHead):
    """Exact k-nearest neighbours by cosine similarity, votes weighted by inverse class frequency
    (so the minority class is not drowned). ``center`` subtracts the training mean first."""

    def __init__(self, n_neighbors=15, center=True, chunk_size=512):
        self.n_neighbors = n_neighbors
        self.center = center
        self.chunk_size = chunk_size

    def _unit(self, X):
        Z = X - self.mean_ if self.center else X
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)

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


class SimpleShot(_BinaryHead):
    """Nearest class prototype (SimpleShot): centre by the training mean, L2-normalise, average each
    class; P(positive) is a logistic of the squared-distance difference (``temperature``)."""

    def __init__(self, temperature=10.0):
        self.temperature = temperature

    def _unit(self, X):
        Z = X - self.mean_
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)

    def fit(self, X, y, X_val=None, y_val=None):
        X, y01, _, _ = self._encode(X, y, None, None)
        self.mean_ = X.mean(axis=0)
        Z = self._unit(X)
        self.prototypes_ = np.stack([Z[y01 == c].mean(axis=0) for c in (0, 1)])
        return self

    def _scores(self, X):
        Z = self._unit(X)
        d = ((Z[:, None, :] - self.prototypes_[None]) ** 2).sum(axis=2)
        z = self.temperature * (d[:, 0] - d[:, 1])
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


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


@dataclass(frozen=True)
class HeadSpec:
    """A head: its factory, the grid searched on the fold's held-out part (first = default), and
    the threshold rule (``val_youden``: maximise balanced accuracy on the held-out part;
    ``fixed_0.5``: the paper's)."""

    factory: Callable[..., BaseEstimator]
    grid: tuple[dict, ...] = field(default_factory=lambda: ({},))
    threshold_rule: str = "val_youden"
    uses_val: bool = False
    name: str = ""  # the ``head`` column of its runs
    source: object = None  # own heads: their ``own_heads.HeadSource`` (built-in heads: None, the package's code)


def _logreg(C=0.01, max_iter=300):
    from sklearn.linear_model import LogisticRegression

    return ValPipeline([("scale", StandardScaler()),
                        ("clf", LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))])


def _torch_linear(**params):
    return TorchLinearProbe(**params)


def _lgbm(pca=0, **params):
    steps = [("pca", ReducePCA(n_components=pca))] if pca else []
    return ValPipeline(steps + [("clf", LGBMHead(**params))])


def _knn(**params):
    return ValPipeline([("clf", CosineKNN(**params))])


def _simpleshot(**params):
    return ValPipeline([("clf", SimpleShot(**params))])


def _mlp(pca=64, **params):
    steps = [("scale", StandardScaler())]
    if pca:  # a cheap randomized PCA first: the MLP then trains on 64-d inputs in ~1 s
        steps.append(("pca", ReducePCA(n_components=pca)))
    return ValPipeline(steps + [("clf", BalancedMLP(**params))])


HEADS: dict[str, HeadSpec] = {
    "logreg": HeadSpec(_logreg, grid=tuple({"C": c} for c in (1e-4, 1e-3, 1e-2, 1e-1))),
    "lgbm": HeadSpec(_lgbm, uses_val=True),
    "knn": HeadSpec(_knn, grid=tuple({"n_neighbors": k} for k in (5, 15, 45, 135))),
    "simpleshot": HeadSpec(_simpleshot),
    "mlp": HeadSpec(_mlp),
    "torch_linear": HeadSpec(_torch_linear, threshold_rule="fixed_0.5", uses_val=True),
}
HEADS = {name: replace(spec, name=name) for name, spec in HEADS.items()}
DEFAULT_HEADS = ("logreg", "lgbm", "knn", "simpleshot", "mlp")  # `--head all`; torch_linear on request


def make_head(name: str, **params) -> BaseEstimator:
    """An unfitted head. ``params`` go to the head (and its preprocessing, e.g. ``pca`` for lgbm/mlp)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name].factory(**params)


def parse_head_params(specs: list[str] | tuple[str, ...], heads: dict[str, HeadSpec] | None = None) -> dict[str, dict]:
    """``["torch_linear.lr=1e-3", "knn.n_neighbors=25"]`` -> ``{head: {key: value}}``; values are JSON
    (numbers, true/false, null) or else strings. Every head and key is checked by building the head.
    ``heads``: the heads this run knows besides the built-in ones (own heads, by name)."""
    known = {**HEADS, **(heads or {})}
    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        head, dot, key = name.strip().partition(".")
        if not (sep and dot and head and key):
            raise ProtocolError(f"--param {spec!r}: write HEAD.KEY=VALUE, e.g. torch_linear.lr=1e-3")
        if head not in known:
            raise ProtocolError(f"--param {spec!r}: unknown head {head!r}; choose from {sorted(known)}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(head, {})[key] = parsed
    for head, params in out.items():
        try:
            known[head].factory(**params)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"--param: head {head} has no parameter among {sorted(params)} ({exc}); "
                                f"its parameters: {sorted(_head_param_names(known[head]))}") from None
    return out


def _head_param_names(spec: HeadSpec) -> set[str]:
    """What ``spec.factory(**params)`` accepts: the factory's own keywords and its estimator's."""
    sig = inspect.signature(spec.factory).parameters
    names = {n for n, p in sig.items() if p.kind != p.VAR_KEYWORD}
    if any(p.kind == p.VAR_KEYWORD for p in sig.values()):
        est = spec.factory()
        last = est.steps[-1][1] if hasattr(est, "steps") else est
        names |= set(last.get_params(deep=False))
    return names


def positive_proba(estimator, X) -> np.ndarray:
    """P(y = 1) from a fitted head, whatever the column order."""
    classes = list(estimator.classes_)
    return estimator.predict_proba(X)[:, classes.index(1)]


__all__ = ["HEADS", "DEFAULT_HEADS", "PAPER_PROBE_PARAMS", "PAPER_SCRIPT_OVERRIDES", "HeadSpec", "make_head",
           "paper_probe_params", "parse_head_params",
           "positive_proba", "TorchLinearProbe", "CosineKNN", "SimpleShot", "LGBMHead", "BalancedMLP",
           "ValPipeline", "clone"]
