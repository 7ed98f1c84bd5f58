"""Chart data the dashboard sends the browser: curves thinned to their corners draw the same lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mitoprobe.classifiers import metrics
from mitoprobe.dashboard.charts import thin_line


def _path(df: pd.DataFrame, x: str, y: str, step: bool) -> np.ndarray:
    """The polyline Vega draws through these vertices (step-after: a horizontal then a vertical leg)."""
    P = df[[x, y]].to_numpy(float)
    if step:
        legs = [P[0]]
        for a, b in zip(P[:-1], P[1:]):
            legs += [np.array([b[0], a[1]]), b]
        P = np.array(legs)
    return P


def _on_path(pts: np.ndarray, path: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Whether each point lies on some segment of ``path``."""
    a, b = path[:-1], path[1:]
    out = []
    for p in pts:
        ab, ap = b - a, p - a
        cross = ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]
        dot = (ap * ab).sum(1)
        out.append(bool(((np.abs(cross) <= tol) & (dot >= -tol) & (dot <= (ab * ab).sum(1) + tol)).any()))
    return np.array(out)


@pytest.mark.parametrize("kind", ["roc", "pr"])
def test_thinned_curves_draw_the_same_line(kind):
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.15).astype(int)
    s = np.round(rng.normal(y, 1.0), 2)  # rounded: ties make diagonal ROC moves too
    if kind == "roc":
        df, x, yy, step = metrics.roc_points(y, s), "fpr", "tpr", False
    else:
        df, x, yy, step = metrics.pr_points(y, s), "recall", "precision", True
    thin = thin_line(df, x, yy, step=step)
    assert len(thin) < len(df) / 2  # far fewer vertices...
    assert thin.iloc[0].equals(df.iloc[0]) and thin.iloc[-1].equals(df.iloc[-1])
    full, kept = _path(df, x, yy, step), _path(thin, x, yy, step)
    assert _on_path(full, kept).all()  # ...and every point of the full line is on the thinned one
    assert _on_path(kept, full).all()


def test_thin_line_keeps_every_corner():
    zigzag = pd.DataFrame({"a": [0, 1, 2, 3, 4], "b": [0, 1, 0, 1, 0]})
    assert len(thin_line(zigzag, "a", "b")) == 5
    straight = pd.DataFrame({"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]})
    assert list(thin_line(straight, "a", "b").index) == [0, 3]
    back = pd.DataFrame({"a": [0, 2, 1], "b": [0, 2, 1]})  # collinear but turning back: not "between"
    assert len(thin_line(back, "a", "b")) == 3
