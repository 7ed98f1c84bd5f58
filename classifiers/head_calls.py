"""Every call into a head's code, checked where it happens: ``predict_proba`` must give one probability per
row in [0, 1] (shape, ``classes_``, finite, in range), and an own head's exception becomes one line naming
the head and where it ran (a fold and its grid point, the held-out part of a fold, a test set).

Why on every call and not only in the 40-row sample check (``own_heads.check_head``): a head that behaves
on the sample can still return NaN, one column or values outside [0, 1] on a real fold; unchecked, such
values were stored and ranked, or surfaced far from their cause (an ``IndexError``, "folds missing"). A
built-in head's exception stays a traceback (mitoprobe's bug, not the user's), and its bad output a
``RuntimeError``: only own heads (``HeadSpec.source`` set) get ``HeadError``. The check is a few numpy
reductions over an (n, 2) array: microseconds beside any fit.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from mitoprobe.store.errors import HeadError

from .heads import HeadSpec

PROBA_SLACK = 1e-6  # float rounding of a normalised row (1.0000000000000002): clipped to [0, 1], not refused


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (a multi-line message stays one line of ours)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextmanager
def head_code(spec: HeadSpec, where: str, call: str):
    """Run an own head's code: any exception re-raised as one ``HeadError`` line, the original chained
    (``mitoprobe -v`` prints its traceback). A built-in head runs unwrapped."""
    if spec.source is None:
        yield
        return
    try:
        yield
    except Exception as exc:  # the user's code may raise anything: chained, not lost
        raise HeadError(f"head {spec.name}, {where}: {call} raised {first_line(exc)} (-v shows its traceback)") \
            from exc


def proba_problem(p, n_rows: int, classes: list) -> str:
    """What keeps ``p`` (``predict_proba`` of ``n_rows`` rows by a head with these ``classes_``) from being
    P(class) per row; '' when nothing does."""
    if 1 not in classes:
        return f"classes_ is {classes or 'missing'}, not [0, 1] (fit on the 0/1 labels it is given)"
    try:
        a = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        return f"predict_proba returned a {type(p).__name__} that is not numbers"
    if a.shape != (n_rows, len(classes)):
        return f"predict_proba returned shape {a.shape} for {n_rows} rows, not ({n_rows}, {len(classes)})"
    n_bad = int(np.count_nonzero(~np.isfinite(a)))
    if n_bad:
        return f"predict_proba returned {n_bad} NaN or infinite value(s) for {n_rows} rows"
    if a.size and (a.min() < -PROBA_SLACK or a.max() > 1 + PROBA_SLACK):
        return f"predict_proba returned values in [{a.min():.3g}, {a.max():.3g}], not probabilities in [0, 1]"
    return ""


def positive_proba(spec: HeadSpec, est, X, where: str) -> np.ndarray:
    """P(y = 1) per row of ``X`` from a fitted head, checked (``proba_problem``); ``where`` names the fold and
    the rows (e.g. "fold 2, test set AtNorM-MD") in the one line an own head's fault gives."""
    with head_code(spec, where, "predict_proba"):
        p = est.predict_proba(X)
        classes = list(getattr(est, "classes_", []))
    problem = proba_problem(p, len(X), classes)
    if problem:
        msg = f"head {spec.name}, {where}: {problem}"
        if spec.source is None:
            raise RuntimeError(f"{msg} (a bug in a built-in head)")
        raise HeadError(f"{msg}: fix the head to give P(class 0), P(class 1) per row, then probe again")
    return np.clip(np.asarray(p)[:, classes.index(1)], 0.0, 1.0)
