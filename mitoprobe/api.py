"""The library: one store as an object. Every CLI command and the main job go through it, and so can
notebooks and scripts (as sqlite-utils is a thin CLI over one library object).

    import mitoprobe
    ws = mitoprobe.open("mitoprobe-store")
    ws.probe("handcrafted", estimator=RandomForestClassifier(), name="forest", grid={"max_depth": [4, 8, None]})
    ws.leaderboard()

    with mitoprobe.open("mitoprobe-store", read_only=True) as ws:   # reads only: any write is refused
        ws.leaderboard()

Results land in the same tables as the CLI's (``runs``/``predictions``), under the same protocol: each
fold's grid search and threshold on its held-out slides, test sets only predicted. Vectors and the
protocol are read once per workspace: a second head on the same set does not read Parquet again
(``refresh()`` forgets them, e.g. after an import from another process). Every error a user can fix is a
``MitoprobeError`` (``mitoprobe.store.errors``), from here as from the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mitoprobe import embedder
from mitoprobe.classifiers import metrics as M
from mitoprobe.classifiers.derived import build as build_views
from mitoprobe.classifiers.features import POOLINGS, Features, current_recipe_id, load_features
from mitoprobe.classifiers.neighbours import search as search_neighbours
from mitoprobe.classifiers.predict import choose_family
from mitoprobe.classifiers.protocol import PAPER_TRAIN, Protocol, load_protocol
from mitoprobe.classifiers.refit import stored_predictions
from mitoprobe.classifiers.report import leaderboard
from mitoprobe.classifiers.runner import resolve_heads, sweep
from mitoprobe.classifiers.runs import read_runs
from mitoprobe.classifiers.scoring import score_test_set
from mitoprobe.classifiers.significance import compare, resolve_families
from mitoprobe.classifiers.verdict import verdict as verdict_table
from mitoprobe.store import Store, paths
from mitoprobe.store.errors import ConfigError, DataError, ProtocolError, StoreError
from mitoprobe.store.integrity import preflight


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
    """A store opened for experiments (``mitoprobe.open``); a context manager (``close`` on exit)."""

    def __init__(self, path: str | Path | None = None, read_only: bool = False, create: bool = False):
        root = paths.store_root(path)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root} is a file, not a store folder: pass the folder that holds the store "
                             "(--store / $MITOPROBE_STORE, default ./mitoprobe-store)")
        if read_only and create:
            raise ConfigError("a read-only workspace cannot create a store: drop read_only or create")
        if not create and not paths.is_store(root):
            what = "no such folder" if not root.exists() else "a folder without a store"
            raise StoreError(f"no mitoprobe store at {root} ({what}): run `mitoprobe data import` with --store {root} "
                             "to make one there (in Python: mitoprobe.open(path, create=True)), or point --store / "
                             "$MITOPROBE_STORE at an existing store")
        self.store = Store(root)
        self.read_only = read_only
        self._features: dict[tuple, Features] = {}
        self._protocols: dict[str, Protocol] = {}

    def __repr__(self) -> str:
        flag = ", read_only=True" if self.read_only else ""
        return f"mitoprobe.open({str(self.store.root)!r}{flag})"

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Forget what was read (vectors, protocols); the store's files stay as they are."""
        self.refresh()

    def _writable(self, what: str) -> Store:
        if self.read_only:
            raise StoreError(f"{what} writes to the store, which was opened read-only: use "
                             f"mitoprobe.open({str(self.store.root)!r}) to write")
        return self.store

    # -- data and vectors ------------------------------------------------------------------------
    def import_benchmark(self, folder: str | Path | None = None, amibr_csv: str | Path | None = None, *,
                         replace: bool = False, progress: bool = False):
        """Import a benchmark folder in the public layout (``mitoprobe data import``): ``folder`` defaults
        to $MITOPROBE_DATA / ../shared/datasets / the download cache, ``amibr_csv`` to the one beside it."""
        folder, amibr_csv = resolve_data(folder, amibr_csv)
        out = self._writable("an import").import_dataset(folder, amibr_csv, progress=progress, replace=replace)
        self.refresh()
        return out

    def import_cohort(self, dataset: str, *, manifest: str | Path | None = None, folder: str | Path | None = None,
                      split: str = "test", replace: bool = False, progress: bool = False):
        """Import a lab's patches (a manifest or a folder) as dataset ``dataset`` (``mitoprobe data import
        --dataset``)."""
        out = self._writable("an import").import_cohort(dataset, manifest=manifest, folder=folder, split=split,
                                                       progress=progress, replace=replace)
        self.refresh()
        return out

    def embed(self, model: str, **kwargs):
        """Embed every patch with a recipe (``mitoprobe embed``); kwargs as ``embedder.embed``. Then the
        set's derived views (the embedding map's PCA, its robustness index) are made current
        (``classifiers.derived.build``: nothing to do when they are), so a page never computes them."""
        kwargs.setdefault("progress", False)
        store = self._writable("embedding")
        out = embedder.embed(store, model, **kwargs)
        self.refresh()
        build_views(store, out.recipe_id, progress=kwargs["progress"])
        return out

    def features(self, model: str, pooling: str = "all", tta: bool = False, allow_stale: bool = False) -> Features:
        """The stored vectors of ``model`` (``.X``, ``.keys``: patch_id and view per row), read once."""
        key = (model, pooling, bool(tta), bool(allow_stale))
        if key not in self._features:
            self._features[key] = load_features(self.store, model, pooling, tta, allow_stale=allow_stale)
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
            self._protocols[train_on] = load_protocol(self.store, train_on=train_on, create=not self.read_only)
        return self._protocols[train_on]

    def protocol(self, train_on: str = PAPER_TRAIN) -> ProtocolView:
        """Folds and test sets without test labels (``score`` reads those)."""
        proto = self._protocol(train_on)
        train = proto.train[["patch_id", "slide", "y", "fold"]].reset_index(drop=True)
        return ProtocolView(train, {name: ts.patch_ids.copy() for name, ts in proto.tests.items()})

    def score(self, test_set: str, proba, threshold: float = 0.5, n_boot: int = 200, seed: int = 0) -> dict:
        """The protocol's metrics of P(atypical) for one test set's patches (in ``protocol().test_sets`` order),
        at ``threshold`` (choose it on held-out training slides, never here)."""
        tests = self._protocol().tests
        if test_set not in tests:
            raise ProtocolError(f"unknown test set {test_set!r}; choose from {sorted(tests)}")
        ts = tests[test_set]
        p = np.asarray(proba, dtype=float)
        if p.shape != ts.patch_ids.shape:
            raise DataError(f"{test_set} has {len(ts.patch_ids)} patches; got {p.shape[0] if p.ndim else 0} "
                            "probabilities (one per patch, in protocol().test_sets order)")
        bad = ~np.isfinite(p) | (p < 0) | (p > 1)
        if bad.any():
            raise DataError(f"{int(bad.sum())} of the {test_set} probabilities are not in [0, 1] (first at position "
                            f"{int(np.flatnonzero(bad)[0])}): give P(atypical) for every patch")
        return score_test_set(ts, p, threshold, n_boot, seed)

    # -- probing -------------------------------------------------------------------------------------
    def probe(self, model: str, head=None, *, estimator=None, name: str | None = None, grid=None,
              params: dict | None = None, head_params: dict | None = None, pooling: str = "all", tta: bool = False,
              seed: int = 0, seeds=None, repeat: bool = False, allow_stale: bool = False,
              n_boot: int = M.N_BOOTSTRAP, train_on: str = PAPER_TRAIN, n_threads: int | None = 1,
              progress: bool = False) -> pd.DataFrame:
        """Heads on ``model``'s vectors under the protocol (``mitoprobe probe`` runs exactly this); returns the
        new run rows (empty when every family already ran: pass ``repeat=True`` to record it again).

        ``head``: None or "all" (the default heads), a built-in head (``"lgbm"``), your own factory
        (``"mypkg.heads:make_svm"``, ``"heads.py:make_svm"``) or a list of these; or ``estimator``: an unfitted
        scikit-learn classifier with ``predict_proba`` (cloned per fold, shown as ``name``). ``grid``: dict of
        lists searched on each fold's held-out part (own heads and estimators; built-in heads search their own).
        ``params``: fixed parameters of the (single) head; ``head_params``: ``{head name: params}``.
        ``seeds``: one repeat of the family per seed (already recorded seeds are skipped). ``n_threads``: BLAS/
        OpenMP threads, 1 as the CLI (None: the libraries' defaults)."""
        _check_counts(seed=seed, seeds=seeds, n_boot=n_boot, n_threads=n_threads, tta=tta)  # as the CLI's options
        specs = resolve_heads(head, grid=grid, name=name, estimator=estimator)  # before any read or write
        if not specs:
            raise ConfigError("no head to probe: pass a head name, a list of names, or None / 'all' for the defaults")
        if params is not None:
            if len(specs) != 1:
                raise ProtocolError(f"params= sets one head's parameters; {len(specs)} heads were asked for: "
                                    "use head_params={name: params}")
            head_params = {**(head_params or {}), specs[0].name: params}
        store = self._writable("probing")
        preflight(store, results=True, folds=True)  # a damaged store: check's one line, nothing read or written
        check_sets(store, model, pooling, allow_stale)  # an unknown, stale or short set: nothing written
        feats = self.features(model, pooling, tta, allow_stale)
        # folds not saved here: the sweep saves them with its first rows, so a head failing in fold 3 writes nothing
        return sweep(store, model, heads=specs, pooling=pooling, tta=tta, seed=seed, repeat=repeat, n_boot=n_boot,
                     head_params=head_params, show_progress=progress, protocol=self._protocols.get(train_on),
                     n_threads=n_threads, train_on=train_on, seeds=list(seeds) if seeds is not None else None,
                     features=feats)

    # -- the paper's comparison (its plan and run: ``finetune.plan``; the API never imports the fine-tuning job)
    def verdict(self) -> pd.DataFrame:
        """Each published paper row beside our run with the paper's settings, and whether it was reproduced
        (``mitoprobe report --paper``; the rule is ``classifiers.verdict.RULE``)."""
        return verdict_table(self.store)

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

    def predictions(self, model: str, head: str, family_id: str | None = None) -> pd.DataFrame:
        """The stored test-set probabilities of a probe family's fold ensemble, with labels: ``family_id``, else
        the newest ``model``/``head`` family (as ``mitoprobe predict`` chooses, naming the others in a log line)."""
        fam = choose_family(self.store, model, head, family_id)
        runs = self.store.results.read("runs")
        mine = runs[(runs["family_id"] == fam) & (runs["fold"] == -1)]
        if mine.empty:
            raise StoreError(f"family {fam} has no fold ensemble (a fine-tuned fold's set, or not every fold "
                             "finished): probe it again")
        rid = mine.sort_values("created_at")["run_id"].iloc[-1]
        preds = stored_predictions(self.store, [rid], split="test")  # filtered a batch at a time, not the whole table
        y = self.store.patches(columns=["patch_id", "y"]).set_index("patch_id")["y"]
        return preds.assign(y=y.reindex(preds["patch_id"]).to_numpy())

    # -- similarity search -----------------------------------------------------------------------------
    def search(self, model: str, queries, k: int = 10, **kwargs) -> pd.DataFrame:
        """The k nearest stored patches of each of many queries, in one call (``mitoprobe search``; kwargs and
        the rules as ``classifiers.neighbours.search``: the set's LanceDB table opened once, batched)."""
        return search_neighbours(self.store, model, queries, k, **kwargs)


def _is_count(v, minimum: int) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _check_counts(seed, seeds, n_boot, n_threads, tta) -> None:
    """The API's arguments checked as the CLI's options are (click's ranges), before anything is read."""
    if not _is_count(seed, 0):
        raise ConfigError(f"seed={seed!r}: give a non-negative integer")
    if seeds is not None and (isinstance(seeds, (str, bytes)) or not all(_is_count(x, 0) for x in seeds)):
        raise ConfigError(f"seeds={seeds!r}: give a list of non-negative integers, e.g. [0, 1, 2]")
    if not _is_count(n_boot, 0):
        raise ConfigError(f"n_boot={n_boot!r}: give a non-negative integer (0: no bootstrap CIs)")
    if n_threads is not None and not _is_count(n_threads, 1):
        raise ConfigError(f"n_threads={n_threads!r}: give a positive integer, or None for the libraries' defaults")
    if not isinstance(tta, (bool, np.bool_)):
        raise ConfigError(f"tta={tta!r}: give True or False")


def check_sets(store: Store, model: str, pooling: str, allow_stale: bool) -> None:
    """Fail on an unknown, missing or stale embedding set, or a pooling its outputs lack, before the
    sweep (whose first step persists the store's folds): a bad model name changes nothing."""
    for name in model.split("+"):
        eset = store.features.resolve(name, current_recipe_id(store, name), allow_stale)
        outputs = POOLINGS.get(pooling) or []
        if "+" not in model and any(o not in eset.outputs for o in outputs):
            raise ProtocolError(f"set {name} has outputs {list(eset.outputs)}; --pooling {pooling} needs {outputs}")


def resolve_data(folder: str | Path | None, amibr_csv: str | Path | None) -> tuple[Path, Path | None]:
    """The benchmark folder (given, else the defaults) and its AMI-BR.csv (given, else found beside it)."""
    if folder is None:
        folder = paths.default_data_dir()
        if folder is None:
            raise DataError("no dataset found: set $MITOPROBE_DATA or pass PATH to the AMi-Br_Benchmark folder, "
                            "put it at ../shared/datasets/AMi-Br_Benchmark, or run `mitoprobe data download`")
    if amibr_csv is None:
        amibr_csv = paths.find_amibr_csv(Path(folder))
    return Path(folder), (Path(amibr_csv) if amibr_csv is not None else None)


def open(path: str | Path | None = None, read_only: bool = False, create: bool = False) -> Workspace:  # noqa: A001
    """The store at ``path`` (default: ``$MITOPROBE_STORE``, else ./mitoprobe-store) as a ``Workspace``.

    A path that is not a store is a ``StoreError`` (a mistyped path is not an empty store), unless ``create``:
    then the folder becomes a store on the first import (nothing is written until then). ``read_only``: every
    method that would write raises ``StoreError``, and the folds are computed without being saved."""
    return Workspace(path, read_only=read_only, create=create)
