"""Logistic regression on standardised features, class-balanced: the strong, cheap linear baseline."""

from __future__ import annotations

from sklearn.preprocessing import StandardScaler

from .base import ValPipeline
from .registry import register_head


@register_head("logreg", grid={"C": [1e-4, 1e-3, 1e-2, 1e-1]}, sweep_order=0)
def logreg(C=0.01, max_iter=300):
    """Standardise, then class-balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return ValPipeline([("scale", StandardScaler()),
                        ("clf", LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))])
