"""The paper's linear probe, reproduced in torch (imported inside ``fit`` only, so the package stays
torch-free on import); its defaults are the paper's published values (``mitoprobe.paper.probe``)."""

from __future__ import annotations

import warnings

import numpy as np

from mitoprobe.paper.probe import PAPER_PROBE_PARAMS

from ..metrics import balanced_accuracy
from .base import _BinaryHead, _holdout, _sigmoid
from .registry import register_head


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
        with warnings.catch_warnings():  # the probe's rows are read-only (Features.fold_matrices); only read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            Xt, Xv = torch.from_numpy(X), torch.from_numpy(X_val)
        yt = torch.from_numpy(y01.astype(np.float32))[:, None]
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
        return _sigmoid(X.astype(np.float64) @ self.coef_ + self.intercept_)


@register_head("torch_linear", threshold_rule="fixed_0.5", uses_val=True)
def torch_linear(**params):
    """The paper's linear probe.

    ``TorchLinearProbe``; on request only (not in ``all``): it costs twice as much as the rest of the sweep."""
    return TorchLinearProbe(**params)
