"""A fold's training rows moved up in place (``Features.put_first`` / ``fold_matrices``) instead of copied: the
head sees exactly the rows a copy would hold, read-only, and the vectors are back as they were afterwards,
also when the fit fails, past the block size, with views (TTA) and with rows of other patches (a cohort's
unlabelled ones, test sets) among the training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mitoprobe.classifiers import features as F
from mitoprobe.classifiers.features import Features
from mitoprobe.classifiers.fitting import fit_fold, keeps_no_rows, predict_test_set
from mitoprobe.classifiers.heads import HEADS
from mitoprobe.classifiers.own_heads import resolve_head
from mitoprobe.classifiers.protocol import FoldData
from mitoprobe.classifiers.protocol import TestSet as Patches  # not collected as a test class


def _features(n_patches: int, views: list[str], rng) -> Features:
    """Rows in a shuffled storage order, as a store written by several imports and workers has them."""
    keys = pd.DataFrame([(f"p{i:04d}", v) for i in range(n_patches) for v in views], columns=["patch_id", "view"])
    keys = keys.sample(frac=1, random_state=int(rng.integers(1 << 30))).reset_index(drop=True).astype("str")
    X = rng.normal(size=(len(keys), 5)).astype(np.float32)
    return Features("toy", "r1", keys, X, sorted(views))


def _snapshot(f: Features) -> dict[tuple[str, str], bytes]:
    return {(p, v): f.X[i].tobytes() for i, (p, v) in enumerate(zip(f.keys["patch_id"], f.keys["view"]))}


@pytest.mark.parametrize("views", [["none"], ["none", "flip", "rot90"]])
@pytest.mark.parametrize("block", [3, F.MOVE_ROWS])  # several blocks, and one
@pytest.mark.parametrize("arranged", [True, False])
def test_a_folds_rows_are_the_copys_rows_and_the_vectors_come_back(views, block, arranged, monkeypatch):
    monkeypatch.setattr(F, "MOVE_ROWS", block)
    rng = np.random.default_rng(len(views) + block)
    f = _features(60, views, rng)
    before = _snapshot(f)
    train = rng.permutation(60)[:45]  # 15 patches never train: a cohort's unlabelled ones, test sets
    train_at = f.locate([f"p{i:04d}" for i in train])
    if arranged:
        train_at = f.put_first(train_at)
        assert _snapshot(f) == before  # reordered, each (patch, view) keeps its vector
    else:  # rows in storage order: increasing only when the training patches are taken in that order
        train_at = np.sort(train_at)
    fold = rng.integers(0, 5, len(train_at))
    for k in range(5):
        tr_rows, _ = f.rows_at(train_at[fold != k])
        va_rows, _ = f.rows_at(train_at[fold == k])
        want_tr, want_va = f.X[tr_rows].copy(), f.X[va_rows].copy()
        with f.fold_matrices(tr_rows, va_rows) as (X_tr, X_va):
            assert np.array_equal(X_tr, want_tr) and np.array_equal(X_va, want_va)
            increasing = bool((np.diff(tr_rows) > 0).all())  # always once arranged; with views, not in storage order
            assert increasing or not arranged
            assert np.shares_memory(X_tr, f.X) == increasing  # moved up, not copied
            # arranged, the fold's rows are the first ones: the held-out rows are placed after the training ones
            assert np.shares_memory(X_va, f.X) == arranged
            assert not X_tr.flags.writeable and not X_va.flags.writeable
            with pytest.raises(ValueError, match="read-only"):
                X_tr[0, 0] = 1.0
            if increasing:  # while rows are moved, nothing may look rows up or move them again
                with pytest.raises(RuntimeError, match="nest"):
                    f.fold_matrices(tr_rows, va_rows).__enter__()
                with pytest.raises(RuntimeError, match="moved up"):
                    f.rows_at(train_at[:1])
        assert _snapshot(f) == before


def _arranged(seed: int, monkeypatch) -> tuple[Features, dict, np.ndarray]:
    """40 patches, all training, arranged; blocks of 4 rows: (features, their vectors, the patches' positions)."""
    monkeypatch.setattr(F, "MOVE_ROWS", 4)
    f = _features(40, ["none"], np.random.default_rng(seed))
    before = _snapshot(f)
    train_at = f.locate([f"p{i:04d}" for i in range(40)])
    train_at = f.put_first(train_at)
    return f, before, train_at


def test_the_vectors_come_back_when_the_fit_fails(monkeypatch):
    f, before, train_at = _arranged(0, monkeypatch)
    tr_rows, _ = f.rows_at(train_at[5:])
    with pytest.raises(ZeroDivisionError):
        with f.fold_matrices(tr_rows, f.rows_at(train_at[:5])[0]):
            1 / 0
    assert _snapshot(f) == before and not f._moved
    assert f.rows_at(train_at[:2])[0].tolist() == [0, 1]  # usable again


def test_rows_out_of_order_or_read_only_are_copied():
    f = _features(20, ["none"], np.random.default_rng(1))
    rows = np.array([5, 2, 9])
    with f.fold_matrices(rows, np.array([0])) as (X_tr, _):
        assert not np.shares_memory(X_tr, f.X) and np.array_equal(X_tr, f.X[rows]) and not X_tr.flags.writeable
    f.X.flags.writeable = False  # vectors someone else owns (a read-only buffer): never written, copied
    with f.fold_matrices(np.array([2, 5, 9]), np.array([0])) as (X_tr, _):
        assert not np.shares_memory(X_tr, f.X) and np.array_equal(X_tr, f.X[[2, 5, 9]])


@pytest.mark.parametrize("head", ["lgbm", "logreg", "torch_linear", "knn"])
def test_a_fit_on_moved_rows_equals_the_fit_on_copies(head, monkeypatch):
    """The same model, to the last bit: the head sees the same numbers in the same order either way."""
    rng = np.random.default_rng(3)
    f = _features(300, ["none"], rng)
    y = rng.integers(0, 2, 300)
    f.X[:, 0] += y[np.argsort(np.argsort(f.keys["patch_id"].to_numpy()))] * 1.5  # a learnable signal
    order = rng.permutation(300)
    train_at = f.locate([f"p{i:04d}" for i in order])
    labels = y[order]
    fold = np.arange(300) % 5
    spec = resolve_head(head)
    fd = FoldData(2, np.flatnonzero(fold != 2), np.flatnonzero(fold == 2), labels, np.arange(300) % 30)

    def copied(self, tr_rows, va_rows, in_place=True):  # what fit_fold did before: copies
        from contextlib import nullcontext
        return nullcontext((self.X[tr_rows], self.X[va_rows]))

    with monkeypatch.context() as m:
        m.setattr(Features, "fold_matrices", copied)
        want = fit_fold(spec, {}, f, fd, train_at)
    train_at = f.put_first(train_at)
    got = fit_fold(spec, {}, f, fd, train_at)
    assert np.array_equal(got["val_proba"], want["val_proba"]) and got["threshold"] == want["threshold"]


KEEPING_HEAD = '''
from sklearn.neighbors import KNeighborsClassifier


def brute_knn():  # keeps the rows it is fitted on (``_fit_X``), no copy
    return KNeighborsClassifier(5, metric="cosine", algorithm="brute")
'''


@pytest.mark.parametrize("head", [*sorted(HEADS), "own brute kNN"])  # every built-in head, and a head that keeps rows
def test_test_sets_predicted_after_the_fold_equal_those_of_copies(head, monkeypatch, tmp_path):
    """The fitted model predicts after its rows were moved back: a head that kept a reference to them would
    read other rows. The built-in heads keep none; an own head is given copies (it might)."""
    if head.startswith("own"):
        (tmp_path / "keeping.py").write_text(KEEPING_HEAD)
        head = f"{tmp_path / 'keeping.py'}:brute_knn"
    rng = np.random.default_rng(5)
    f = _features(200, ["none"], rng)
    y = rng.integers(0, 2, 200)
    f.X[:, 0] += y[np.argsort(np.argsort(f.keys["patch_id"].to_numpy()))] * 1.5
    train = np.arange(150)  # the other 50 are a test set
    train_at, labels = f.locate([f"p{i:04d}" for i in train]), y[train]
    test = Patches("t", np.array([f"p{i:04d}" for i in range(150, 200)]), y[150:], pd.DataFrame())
    fold = np.arange(150) % 5
    spec = resolve_head(head)
    fd = FoldData(1, np.flatnonzero(fold != 1), np.flatnonzero(fold == 1), labels, np.arange(150) % 30)

    def copied(self, tr_rows, va_rows, in_place=True):
        from contextlib import nullcontext
        return nullcontext((self.X[tr_rows], self.X[va_rows]))

    with monkeypatch.context() as m:
        m.setattr(Features, "fold_matrices", copied)
        want = predict_test_set(spec, fit_fold(spec, {}, f, fd, train_at)["estimator"], f, test, "t")[0]
    train_at = f.put_first(train_at)
    got = predict_test_set(spec, fit_fold(spec, {}, f, fd, train_at)["estimator"], f, test, "t")[0]
    assert np.array_equal(got, want)
    assert keeps_no_rows(spec) == (spec.source is None)


IN_PLACE_HEAD = '''
import numpy as np
from sklearn.linear_model import LogisticRegression


class Doubling(LogisticRegression):
    def fit(self, X, y):
        X *= 2.0  # scales the rows it is given in place
        return super().fit(X, y)


def doubling():
    return Doubling()
'''


def test_an_own_head_that_writes_into_its_rows_fails_with_its_own_line_and_writes_nothing(tmp_path):
    from conftest import make_six_slide_store

    from mitoprobe.classifiers.head_calls import HeadError
    from mitoprobe.classifiers.runner import sweep
    from mitoprobe.embedder import embed

    store = make_six_slide_store(tmp_path / "store")
    embed(store, "handcrafted", progress=False)
    head = tmp_path / "in_place.py"
    head.write_text(IN_PLACE_HEAD)
    with pytest.raises(HeadError, match=r"head doubling, fold 0: fit raised .*read-only"):
        sweep(store, "handcrafted", heads=[f"{head}:doubling"], n_boot=10, show_progress=False)
    assert not store.results.parts("runs") and not store.results.parts("predictions")


def test_a_move_that_fails_half_way_puts_back_what_it_moved(monkeypatch):
    """Out of memory for the third block's copy: the two blocks moved are moved back, nothing else is touched."""
    f, before, train_at = _arranged(2, monkeypatch)
    tr_rows, va_rows = f.rows_at(train_at[np.r_[0:3, 5:40]])[0], f.rows_at(train_at[3:5])[0]

    class Failing(np.ndarray):  # its fancy-index reads fail from the third on
        reads = 0

        def __getitem__(self, key):
            if isinstance(key, np.ndarray) and key.dtype.kind == "i" and len(key) == F.MOVE_ROWS:
                Failing.reads += 1
                if Failing.reads == 3:
                    raise MemoryError("no room for a block")
            return super().__getitem__(key)

    f.X = f.X.view(Failing)
    with pytest.raises(MemoryError):
        with f.fold_matrices(tr_rows, va_rows):
            pass
    f.X = f.X.view(np.ndarray)
    assert _snapshot(f) == before and not f._moved
