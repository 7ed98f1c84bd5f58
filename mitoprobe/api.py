"""The Python API: one store as an object, for notebooks and scripts (the CLI's commands as methods).

    import mitoprobe
    ws = mitoprobe.open("mitoprobe-store")
    ws.probe("handcrafted", estimator=RandomForestClassifier(), name="forest", grid={"max_depth": [4, 8, None]})
    ws.leaderboard()

Results land in the same tables as the CLI's (``runs``/``predictions``), under the same protocol: each
fold's grid search and threshold on its held-out slides, test sets only predicted. Vectors and the
protocol are read once per workspace: a second head on the same set does not read Parquet again
(``refresh()`` forgets them, e.g. after an import from another process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mitoprobe import embedder
from mitoprobe.classifiers import metrics as M
from mitoprobe.classifiers.features import Features, load_features
from mitoprobe.classifiers.own_heads import estimator_head, own_head, resolve_head
from mitoprobe.classifiers.protocol import PAPER_TRAIN, Protocol, load_protocol
from mitoprobe.classifiers.refit import stored_predictions
from mitoprobe.classifiers.report import leaderboard
from mitoprobe.classifiers.runner import run_family
from mitoprobe.classifiers.runs import read_runs
from mitoprobe.classifiers.scoring import score_test_set
from mitoprobe.classifiers.significance import compare, resolve_families
from mitoprobe.store import Store


@dataclass(frozen=True)
class ProtocolView:
    """The folds and test sets, for people who write their own loop. Test labels are not here: score a
    test set's probabilities with ``Workspace.score`` (the labels are read there, after every choice)."""

    train: pd.DataFrame  # patch_id, slide, y (0/1, 1 = atypical), fold: the slide-grouped folds
    test_sets: dict[str, np.ndarray]  # test set -> patch ids (no labels)

    def fold(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(training patch ids, held-out patch ids) of fold ``k``."""
        held = self.train["fold"].to_numpy() == k
        ids = self.train["patch_id"].to_numpy()
        return ids[~held], ids[held]


class Workspace:
    """A store opened for experiments (``mitoprobe.open``)."""

    def __init__(self, path: str | Path | None = None):
        self.store = Store(path)
        self._features: dict[tuple, Features] = {}
        self._protocols: dict[str, Protocol] = {}

    def __repr__(self) -> str:
        return f"mitoprobe.open({str(self.store.root)!r})"

    # -- data and vectors ------------------------------------------------------------------------
    def import_benchmark(self, folder: str | Path, amibr_csv: str | Path | None = None):
        """Import a benchmark folder in the public layout (``mitoprobe data import``)."""
        out = self.store.import_dataset(folder, amibr_csv)
        self.refresh()
        return out

    def embed(self, model: str, **kwargs):
        """Embed every patch with a recipe (``mitoprobe embed``); kwargs as ``embedder.embed``."""
        kwargs.setdefault("progress", False)
        out = embedder.embed(self.store, model, **kwargs)
        self.refresh()
        return out

    def features(self, model: str, pooling: str = "all", tta: bool = False) -> Features:
        """The stored vectors of ``model`` (``.X``, ``.keys``: patch_id and view per row), read once."""
        key = (model, pooling, bool(tta))
        if key not in self._features:
            self._features[key] = load_features(self.store, model, pooling, tta)
        return self._features[key]

    def patches(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The patch table (no pixels): dataset, split, label, slide, votes, ..."""
        return self.store.patches(columns=columns)

    def refresh(self) -> None:
        """Forget the vectors and protocol read so far (after the store changed elsewhere)."""
        self._features.clear()
        self._protocols.clear()

    # -- the protocol ------------------------------------------------------------------------------
    def _protocol(self, train_on: str = PAPER_TRAIN) -> Protocol:
        if train_on not in self._protocols:
            self._protocols[train_on] = load_protocol(self.store, train_on=train_on)
        return self._protocols[train_on]

    def protocol(self, train_on: str = PAPER_TRAIN) -> ProtocolView:
        """Folds and test sets without test labels (``score`` reads those)."""
        proto = self._protocol(train_on)
        train = proto.train[["patch_id", "slide", "y", "fold"]].reset_index(drop=True)
        return ProtocolView(train, {name: ts.patch_ids.copy() for name, ts in proto.tests.items()})

    def score(self, test_set: str, proba, threshold: float = 0.5, n_boot: int = 200, seed: int = 0) -> dict:
        """The protocol's metrics of P(atypical) for one test set's patches (in ``protocol().test_sets`` order),
        at ``threshold`` (choose it on held-out training slides, never here)."""
        ts = self._protocol().tests[test_set]
        p = np.asarray(proba, dtype=float)
        if p.shape != ts.patch_ids.shape:
            raise ValueError(f"{test_set} has {len(ts.patch_ids)} patches; got {p.shape[0]} probabilities")
        return score_test_set(ts, p, threshold, n_boot, seed)

    # -- probing -------------------------------------------------------------------------------------
    def probe(self, model: str, head: str | None = None, *, estimator=None, name: str | None = None, grid=None,
              params: dict | None = None, pooling: str = "all", tta: bool = False, seed: int = 0,
              seeds=None, repeat: bool = False, n_boot: int = M.N_BOOTSTRAP,
              train_on: str = PAPER_TRAIN, n_threads: int | None = 1) -> pd.DataFrame:
        """One head on ``model``'s vectors under the protocol; returns the new run rows (empty when this exact
        family already ran: pass ``repeat=True`` to record it again).

        ``head``: a built-in head (``"lgbm"``) or your own factory (``"mypkg.heads:make_svm"``,
        ``"heads.py:make_svm"``); or ``estimator``: an unfitted scikit-learn classifier with ``predict_proba``
        (cloned per fold, shown as ``name``). ``grid``: dict of lists searched on each fold's held-out part
        (own heads and estimators; built-in heads search their own). ``params``: fixed parameters.
        ``seeds``: one repeat of the family per seed (already recorded seeds are skipped). ``n_threads``: BLAS/
        OpenMP threads, 1 as the CLI (None: the libraries' defaults)."""
        if (head is None) == (estimator is None):
            raise ValueError("pass either head= (a name or MODULE:FACTORY) or estimator= (a scikit-learn classifier)")
        if estimator is not None:
            spec = estimator_head(estimator, name=name, grid=grid)
        elif grid is not None or name is not None:
            spec = own_head(head, grid=grid, name=name)
        else:
            spec = resolve_head(head)
        feats = self.features(model, pooling, tta)
        options = dict(pooling=pooling, views=feats.views, tta=bool(tta))
        out = []
        with threadpool_limits(n_threads):  # as the CLI's sweep: one BLAS/OpenMP thread (small matrices)
            for s in seeds if seeds is not None else [seed]:
                rows = run_family(self.store, feats, self._protocol(train_on), spec, options, params, seed=s,
                                  repeat=repeat, n_boot=n_boot, exact_seed=seeds is not None)
                if rows is not None:
                    out.append(rows)
        return pd.concat(out, ignore_index=True) if out else pd.DataFrame()

    # -- results ---------------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """Every run row (one per family x fold x repeat x test set), as reports read them."""
        return read_runs(self.store)

    def leaderboard(self, model: str | None = None, family: str | None = None, paper: bool = True) -> pd.DataFrame:
        """One row per (family, test set): mean ± std over folds, the fold ensemble, the paper's rows."""
        return leaderboard(self.store, model=model, family=family, with_paper=paper)

    def compare(self, *families: str, fold: int = -1, n_boot: int = 1000) -> pd.DataFrame:
        """Paired bootstrap tests between families (``"MODEL:HEAD"`` or family ids) on the same patches,
        Holm-adjusted per test set (``mitoprobe report --compare``)."""
        return compare(self.store, resolve_families(self.store.results.read("runs"), list(families)), fold=fold,
                       n_boot=n_boot)

    def predictions(self, model: str, head: str) -> pd.DataFrame:
        """The stored test-set probabilities of the newest ``model``/``head`` family's fold ensemble, with labels."""
        runs = self.store.results.read("runs")
        mine = runs[(runs["model"] == model) & (runs["head"] == head) & (runs["fold"] == -1)]
        if mine.empty:
            raise ValueError(f"no fold ensemble of {model}/{head} in the store; probe it first")
        rid = mine.sort_values("created_at")["run_id"].iloc[-1]
        preds = stored_predictions(self.store, [rid], split="test")  # one DuckDB scan, not the whole table
        y = self.store.patches(columns=["patch_id", "y"]).set_index("patch_id")["y"]
        return preds.assign(y=y.reindex(preds["patch_id"]).to_numpy())


def open(path: str | Path | None = None) -> Workspace:  # noqa: A001 - mitoprobe.open, like the issue's API
    """The store at ``path`` (default: ``$MITOPROBE_STORE``, else ./mitoprobe-store) as a ``Workspace``."""
    return Workspace(path)
