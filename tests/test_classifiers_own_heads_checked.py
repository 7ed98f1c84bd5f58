"""An own head is checked on every call, not only on the 40-row sample: a head that behaves there and then, from
fold 2 on or only on a test set, returns values outside [0, 1], one column, NaN or the wrong number of rows, or
raises in fit or predict_proba, gets one ``error:`` line naming the head, the fold and the test set (its own
traceback behind -v), raises ``HeadError`` through the API, and leaves every byte of the store as it was."""

from __future__ import annotations

import pytest
from classifiers_synth import synthetic_store
from conftest import make_six_slide_store, run_cli

import mitoprobe
from mitoprobe.classifiers.own_heads import own_head
from mitoprobe.classifiers.runner import sweep
from mitoprobe.embedder import embed
from mitoprobe.store.errors import HeadError

# FLAKY_FAULT: what goes wrong; FLAKY_WHEN: "fold2" (from fold 2 on) or "test" (on every predict_proba after the
# held-out part's, which fit_fold makes first: the test sets, or the patches `predict` asks for).
FLAKY_HEAD = '''
import os

import numpy as np
from sklearn.linear_model import LogisticRegression

FITS = [0]


class Flaky(LogisticRegression):
    def fit(self, X, y):
        FITS[0] = 0 if len(X) == 40 else FITS[0] + 1  # the 40-row sample check restarts the count
        self.fold_, self.calls_ = FITS[0] - 1, 0  # one grid point: one fit per fold, in fold order
        if os.environ.get("FLAKY_FAULT") == "fit" and self._faulty():
            raise ValueError("the solver diverged")
        return super().fit(X, y)

    def _faulty(self):
        when = os.environ.get("FLAKY_WHEN", "")
        if self.fold_ < 0:  # the sample check
            return False
        return self.fold_ >= 2 if when == "fold2" else when == "test" and self.calls_ > 1

    def predict_proba(self, X):
        p = super().predict_proba(X)
        self.calls_ += 1
        fault = os.environ.get("FLAKY_FAULT", "") if self._faulty() else ""
        if fault == "predict":
            raise RuntimeError("the kernel cache is corrupt")
        if fault == "range":
            return 3 * p - 1  # in [-1, 2]
        if fault == "one_column":
            return p[:, 1:]
        if fault == "nan":
            p[::7] = np.nan
        if fault == "rows":
            return p[:-1]
        return p


def make_flaky(C=1.0):
    return Flaky(C=C, max_iter=500)
'''

HELD_OUT_2 = "head make_flaky, the held-out part of fold 2: "
TEST_0 = "head make_flaky, fold 0, test set AMi-Br-test: "
CASES = [  # (fault, when, the start of the one line, what it says)
    ("range", "fold2", HELD_OUT_2, "values in [-1, 2]"),
    ("range", "test", TEST_0, "values in [-1, 2]"),
    ("one_column", "fold2", HELD_OUT_2, "shape"),
    ("one_column", "test", TEST_0, "shape"),
    ("nan", "fold2", HELD_OUT_2, "NaN"),
    ("nan", "test", TEST_0, "NaN"),
    ("rows", "fold2", HELD_OUT_2, "shape"),
    ("rows", "test", TEST_0, "shape"),
    ("fit", "fold2", "head make_flaky, fold 2: fit raised ValueError: the solver diverged", "-v shows"),
    ("predict", "fold2", HELD_OUT_2 + "predict_proba raised RuntimeError: the kernel cache is corrupt", "-v shows"),
    ("predict", "test", TEST_0 + "predict_proba raised RuntimeError: the kernel cache is corrupt", "-v shows"),
]
RAISES = {"fit": "ValueError: the solver diverged", "predict": "RuntimeError: the kernel cache is corrupt"}


def tree(root) -> dict[str, bytes]:
    """path -> bytes of every file under the store (what "byte-identical" compares), the OS lock files excepted:
    the family's ``locks/family-<id>.lock`` is taken before fitting and, as every flock file, kept empty after
    release (bookkeeping, not store content: as tests/test_store_damage.py compares)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "locks"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A synthetic store never probed: no folds.parquet, no results (every probe here must fail)."""
    return synthetic_store(tmp_path_factory.mktemp("checked") / "st", name="synth_checked")


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("heads") / "flaky.py"
    p.write_text(FLAKY_HEAD)
    return p


def _error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("fault,when,start,says", CASES)
def test_a_later_fault_is_one_line_through_the_cli_and_nothing_is_written(monkeypatch, capsys, synth, head_file,
                                                                          fault, when, start, says):
    monkeypatch.setenv("FLAKY_FAULT", fault)
    monkeypatch.setenv("FLAKY_WHEN", when)
    before = tree(synth.root)
    code, out = run_cli(monkeypatch, capsys, "probe", "--store", str(synth.root), "--model", "synth_checked",
                        "--head", f"{head_file}:make_flaky")
    errors = _error_lines(out)
    assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
    assert errors[0].startswith(f"error: {start}") and says in errors[0], errors[0]
    assert tree(synth.root) == before  # no results, no folds.parquet, no format stamp: byte-identical
    if fault in RAISES or fault == "range":  # -v: the head's own traceback (if any) before the same one line
        code, out = run_cli(monkeypatch, capsys, "-v", "probe", "--store", str(synth.root), "--model",
                            "synth_checked", "--head", f"{head_file}:make_flaky")
        assert code == 2 and _error_lines(out) == errors, out
        if fault in RAISES:
            assert "Traceback (most recent call last)" in out and RAISES[fault] in out and "flaky.py" in out, out
            assert out.index("Traceback") < out.index("error:")
        else:
            assert "Traceback" not in out, out
        assert tree(synth.root) == before


@pytest.mark.parametrize("fault,when,start,says", CASES)
def test_a_later_fault_raises_head_error_through_the_api(monkeypatch, synth, head_file, fault, when, start, says):
    monkeypatch.setenv("FLAKY_FAULT", fault)
    monkeypatch.setenv("FLAKY_WHEN", when)
    before = tree(synth.root)
    with pytest.raises(HeadError) as err:
        mitoprobe.open(synth.root).probe("synth_checked", head=f"{head_file}:make_flaky", n_boot=20)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(start) and says in msg, msg
    if fault in RAISES:
        assert RAISES[fault] == f"{type(err.value.__cause__).__name__}: {err.value.__cause__}"
    assert tree(synth.root) == before


def test_a_head_that_passes_the_sample_check_is_not_refused(synth, head_file, monkeypatch):
    """The checks refuse nothing a well-behaved head returns (the same head, no fault: every fold runs)."""
    monkeypatch.delenv("FLAKY_FAULT", raising=False)
    st = synthetic_store(synth.root.parent / "ok", name="synth_checked")
    rows = sweep(st, "synth_checked", heads=[own_head(f"{head_file}:make_flaky")], n_boot=20, show_progress=False)
    assert rows["fold"].nunique() == 6 and st.folds_path.is_file()  # folds saved with the family's rows
    st.folds_path.unlink()
    again = sweep(st, "synth_checked", heads=[own_head(f"{head_file}:make_flaky")], n_boot=20, show_progress=False)
    assert again.empty and st.folds_path.is_file()  # stored already: skipped, and the folds saved again


def test_predict_refits_a_head_that_now_misbehaves_and_says_which(monkeypatch, capsys, tmp_path, head_file):
    """The refit path (`mitoprobe predict`): the same file, now faulty on the patches asked for. (A store with
    pixels: reading stored predictions opens the store's SQL views, which need them.)"""
    monkeypatch.delenv("FLAKY_FAULT", raising=False)
    st = make_six_slide_store(tmp_path)
    embed(st, "handcrafted", progress=False)
    code, out = run_cli(monkeypatch, capsys, "probe", "--store", str(st.root), "--model", "handcrafted",
                        "--head", f"{head_file}:make_flaky")
    assert code == 0, out
    out_csv = tmp_path / "pred.csv"
    args = ["predict", "--store", str(st.root), "--model", "handcrafted", "--head", "make_flaky",
            "--dataset", "AtNorM-MD", "--out", str(out_csv)]
    code, out = run_cli(monkeypatch, capsys, *args)
    assert code == 0 and out_csv.is_file(), out
    out_csv.unlink()
    before = tree(st.root)
    for fault, says in [("range", "values in [-1, 2]"), ("nan", "NaN"), ("one_column", "shape"),
                        ("predict", "predict_proba raised RuntimeError")]:
        monkeypatch.setenv("FLAKY_FAULT", fault)
        monkeypatch.setenv("FLAKY_WHEN", "test")
        code, out = run_cli(monkeypatch, capsys, *args)
        errors = _error_lines(out)
        assert code == 2 and len(errors) == 1 and "Traceback" not in out, out
        assert errors[0].startswith("error: head make_flaky, fold 0 refitted, the patches to predict: ") \
            and says in errors[0], errors[0]
        assert not out_csv.exists() and tree(st.root) == before
    monkeypatch.setenv("FLAKY_WHEN", "fold2")  # the refit's own held-out part of fold 2
    code, out = run_cli(monkeypatch, capsys, *args)
    expected = f"error: {HELD_OUT_2}predict_proba raised {RAISES['predict']} (-v shows its traceback)"
    assert code == 2 and _error_lines(out) == [expected], out
