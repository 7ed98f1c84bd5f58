"""Classifier heads on frozen embeddings: scikit-learn estimators behind one registry.

``make_head(name, **params)`` returns an unfitted estimator (often a :class:`ValPipeline`). Every
head has ``fit(X, y, X_val=None, y_val=None)`` and ``predict_proba``; heads that early-stop use the
validation rows they are given (the fold's held-out part) and otherwise split their own from the
training rows. ``HEADS[name]`` records, next to the factory, the small grid that the protocol
searches on the fold's held-out part and the default decision-threshold rule.

One module per head family registers itself (``@register_head``, ``registry.py``); this package
imports every module in it, so adding a built-in head is one new file. torch is imported inside
``TorchLinearProbe.fit`` only.
"""

from __future__ import annotations

from mitoprobe.paper.probe import PAPER_PROBE_PARAMS, PAPER_SCRIPT_OVERRIDES, paper_probe_params

from .base import ReducePCA, ValPipeline
from .knn import CosineKNN  # the estimators, for direct use and scikit-learn's checks
from .lgbm import LGBMHead
from .mlp import BalancedMLP
from .registry import (HEADS, HeadSpec, default_heads, expand_grid, heads_help, import_family_modules, make_head,
                       parse_head_params, positive_proba, register_head)
from .simpleshot import SimpleShot
from .torch_linear import TorchLinearProbe

import_family_modules(__name__, __path__)  # every family module registers its heads, the ones above and any other

DEFAULT_HEADS = default_heads()  # `--head all`; torch_linear on request

__all__ = ["HEADS", "DEFAULT_HEADS", "PAPER_PROBE_PARAMS", "PAPER_SCRIPT_OVERRIDES", "HeadSpec", "make_head",
           "paper_probe_params", "parse_head_params", "positive_proba", "register_head", "expand_grid",
           "heads_help", "TorchLinearProbe", "CosineKNN", "SimpleShot", "LGBMHead", "BalancedMLP", "ReducePCA",
           "ValPipeline"]
