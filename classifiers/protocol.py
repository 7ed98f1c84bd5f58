"""The paper's evaluation protocol, in one place.

* Folds: ``StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=42)`` over the 2,894 AMi-Br
  training patches **in the row order of amibr_train_split.csv**, stratified by ``final_label`` and
  grouped by slide (exactly the call in the paper's scripts, so the folds are the paper's folds).
  Computed once and persisted in the store (``folds.parquet``).
* For fold k the model is fitted on the other four folds (``train``) and everything that is
  *selected* (hyper-parameters, early-stopping epoch, decision threshold) is chosen on fold k
  (``val``, the fold's held-out part: whole slides the model never saw). Test sets are only ever
  predicted.
* Three test sets, named as in the paper's CSV: ``AMi-Br-test``, ``AtNorM-Br``, ``AtNorM-MD``; and
  every user cohort (``mitoprobe data import --dataset NAME``) with labelled ``split=test`` patches is
  an extra test set named NAME, scored by the same fold models (unlabelled patches are never scored).
* Training on another dataset than AMi-Br (a cohort's ``split=train`` patches, slide-grouped the
  same way) is a named protocol option, ``train_on``, recorded in the run; a cohort never mixes into
  the paper's folds.

Why this shape: selection code receives a :class:`FoldData`, which holds training-side rows only;
test labels live in :class:`TestSet` objects that the fitting path never receives. A test permutes
every test label and checks that all selected parameters and thresholds stay identical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mitoprobe.store import datasets, schema
from mitoprobe.store.errors import DamagedStoreError, ProtocolError, StoreError

N_FOLDS = 5
FOLD_SEED = 42
# paper name -> (dataset, split) in the patches table, from the dataset specs (store/datasets.py):
# AMi-Br-test, AtNorM-Br, AtNorM-MD
TEST_SETS: dict[str, tuple[str, str]] = datasets.test_sets()
PAPER_TRAIN = "AMi-Br"  # the paper trains on AMi-Br's training split; anything else is ``train_on``
FOLD_COLUMNS = list(schema.FOLD_COLUMNS)  # what folds.parquet holds (store.schema.FOLDS)


def available_test_sets(patches: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Every test set the store can score: the benchmark's (``TEST_SETS``, in the paper's order), then
    each user dataset with labelled ``split=test`` patches, under its own name (sorted)."""
    out = dict(TEST_SETS)
    benchmark = {ds for ds, _ in TEST_SETS.values()} | {s.name for s in datasets.BENCHMARK}
    labelled = patches[(patches["split"] == "test") & patches["y"].notna() & ~patches["dataset"].isin(benchmark)]
    for ds in sorted(labelled["dataset"].unique()):
        out[ds] = (ds, "test")
    return out


def train_patches(patches: pd.DataFrame, dataset: str = PAPER_TRAIN) -> pd.DataFrame:
    """The training patches of ``dataset`` in ``train_row`` order (AMi-Br: ``amibr_train_split.csv``
    row order; a cohort: its manifest row order)."""
    tr = patches[(patches["dataset"] == dataset) & (patches["split"] == "train")]
    if dataset != PAPER_TRAIN:
        tr = tr[tr["y"].notna()]
    if tr.empty:
        raise ProtocolError(f"dataset {dataset!r} has no labelled train patches to train on; import them with "
                            "split=train (`mitoprobe data import --dataset NAME --split train`, or a manifest's "
                            "split column)")
    if tr["train_row"].isna().any():
        raise StoreError(f"the store's {dataset} train patches lack train_row; re-run `mitoprobe data import`")
    return tr.sort_values("train_row", kind="mergesort").reset_index(drop=True)


def compute_folds(patches: pd.DataFrame, n_splits: int = N_FOLDS, random_state: int = FOLD_SEED,
                  dataset: str = PAPER_TRAIN) -> pd.DataFrame:
    """One row per training patch of ``dataset`` with its held-out fold (0..n_splits-1)."""
    from sklearn.model_selection import StratifiedGroupKFold

    tr = train_patches(patches, dataset)
    n_slides = tr["slide"].nunique()
    if tr["slide"].isna().any() or n_slides < n_splits:
        raise ProtocolError(f"the {n_splits}-fold slide-grouped split needs every {dataset} training patch to have a "
                            f"slide and at least {n_splits} slides; the store has {n_slides} slide(s)"
                            + (" and patches without one" if tr["slide"].isna().any() else "")
                            + (": import the train split CSV with its slide column" if dataset == PAPER_TRAIN
                               else ": give the manifest a slide column"))
    fold = np.full(len(tr), -1, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    # the paper stratifies on final_label strings ({'Atypical','Normal'}) grouped by slide strings; their sorted
    # codes are what StratifiedGroupKFold makes of them (np.unique: sorted), so the folds are the same, without
    # a Python string per patch (a cohort's 200,000)
    labels, slides = (pd.factorize(tr[c], sort=True)[0] for c in ("label", "slide"))
    for k, (_, held_out) in enumerate(cv.split(np.zeros(len(tr)), labels, slides)):
        fold[held_out] = k
    out = tr[["patch_id", "train_row", "slide", "label", "y"]].copy()
    out["fold"] = fold
    return out.reset_index(drop=True)


def folds(store, create: bool = True, train_on: str = PAPER_TRAIN) -> pd.DataFrame:
    """The persisted folds; computed and written on first use. Refuses folds that no longer match
    the stored patches (re-imported data). Folds over another ``train_on`` dataset are computed the
    same way (deterministic) and not persisted: ``folds.parquet`` is the paper's."""
    patches = store.patches(columns=["patch_id", "dataset", "split", "label", "y", "slide", "train_row"])
    if train_on != PAPER_TRAIN:
        return compute_folds(patches, dataset=train_on)
    stored = store.read_folds()
    expected = compute_folds(patches)
    if stored is not None:
        same_patches = ({"patch_id", "fold"} <= set(stored.columns) and len(stored) == len(expected)
                        and (stored["patch_id"].to_numpy() == expected["patch_id"].to_numpy()).all())
        if not same_patches:  # what `store check` finds too (it compares the patches, not the folds)
            raise DamagedStoreError(f"{store.folds_path} does not list the stored {PAPER_TRAIN} training patches "
                                    "(data re-imported, or the file of another store?); run `mitoprobe store "
                                    "repair --yes` to set it aside: the folds are then recomputed "
                                    "(deterministic) and saved again")
        if not (stored["fold"].to_numpy() == expected["fold"].to_numpy()).all():
            raise DamagedStoreError(f"{store.folds_path} lists the stored {PAPER_TRAIN} training patches but other "
                                    "folds than the paper's split of them (edited?); `mitoprobe store repair` "
                                    "cannot tell such a file from the right one: move it out of the store and the "
                                    "folds are recomputed (deterministic) and saved again")
        return stored
    if create:
        store.write_folds(expected)
    return expected


@dataclass(frozen=True)
class FoldData:
    """Training-side rows of one outer fold: everything a selection step may look at."""

    fold: int
    train_idx: np.ndarray  # indices into the training patch table (4 folds)
    val_idx: np.ndarray  # the held-out fold
    y: np.ndarray  # labels of all training patches (0/1, 1 = atypical)
    groups: np.ndarray  # slide per training patch, as an integer code (one per slide)


@dataclass(frozen=True)
class TestSet:
    name: str
    patch_ids: np.ndarray
    y: np.ndarray
    votes: pd.DataFrame  # expert<k>_atypical columns, aligned with patch_ids


@dataclass(frozen=True)
class Protocol:
    """Folds + test sets for one store."""

    train: pd.DataFrame  # FOLD_COLUMNS, CSV row order
    tests: dict[str, TestSet]
    train_on: str = PAPER_TRAIN
    unsaved_folds: bool = False  # the paper's folds, computed but not in folds.parquet yet (``save_folds``)

    @property
    def n_folds(self) -> int:
        return int(self.train["fold"].max()) + 1

    def fold_data(self, k: int) -> FoldData:
        f = self.train["fold"].to_numpy()
        return FoldData(fold=k, train_idx=np.flatnonzero(f != k), val_idx=np.flatnonzero(f == k),
                        y=self._labels, groups=self._slide_codes)

    @functools.cached_property
    def _labels(self) -> np.ndarray:  # shared by every fold's FoldData: read-only
        y = self.train["y"].to_numpy().astype(np.int64)
        y.flags.writeable = False
        return y

    @functools.cached_property
    def _slide_codes(self) -> np.ndarray:  # codes, once: not a cohort's 200,000 slide strings per fold
        codes = pd.factorize(self.train["slide"])[0]
        codes.flags.writeable = False
        return codes


def load_protocol(store, test_sets: list[str] | None = None, train_on: str = PAPER_TRAIN,
                  create: bool = True) -> Protocol:
    """Folds (the paper's persisted on first use, unless ``create`` is False: a read-only reader, or a writer that
    saves them with its first rows, ``save_folds``) and the named test sets (default: every available one)."""
    fo = folds(store, create=create, train_on=train_on)
    unsaved = train_on == PAPER_TRAIN and not create and not store.folds_path.is_file()
    return Protocol(train=fo, tests=load_test_sets(store, test_sets), train_on=train_on, unsaved_folds=unsaved)


def save_folds(store, proto: Protocol) -> None:
    """Save the paper's folds that ``proto`` computed without saving (``create=False``), unless the store has
    them by now. A writer calls it just before its first rows: a probe that fails in a later fold then leaves
    no new folds.parquet either (the folds are deterministic, so saving them late changes nothing else)."""
    if proto.unsaved_folds and not store.folds_path.is_file():
        store.write_folds(proto.train)


def load_test_sets(store, test_sets: list[str] | None = None) -> dict[str, TestSet]:
    """The named test sets (default: all available, ``available_test_sets``) with labels and expert
    votes, labelled patches only; no folds needed (scoring only). Reads only the columns it keeps: a store
    of a 200,000-patch cohort's every column is ~0.7 GB in pandas."""
    names = store.patch_parts.column_names()
    votes = [c for c in names if c.startswith("expert") and c.endswith("_atypical")]
    patches = store.patches(columns=["patch_id", "dataset", "split", "y", *votes])
    known = available_test_sets(patches)
    tests = {}
    for name in test_sets or list(known):
        if name not in known:
            raise ProtocolError(f"unknown test set {name!r}; choose from {list(known)}")
        ds, split = known[name]
        sub = patches[(patches["dataset"] == ds) & (patches["split"] == split) & patches["y"].notna()]
        sub = sub.sort_values("patch_id")
        if sub.empty:
            continue
        tests[name] = TestSet(name, sub["patch_id"].to_numpy(), sub["y"].to_numpy().astype(np.int64),
                              sub[votes].reset_index(drop=True))
    return tests
