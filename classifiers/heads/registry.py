"""The head registry, as timm registers models: a family module decorates its factory with
``@register_head(name, grid=..., threshold_rule=...)`` and the name is the key, with no second table.

``HEADS[name]`` is a :class:`HeadSpec`: the factory, the small grid the protocol searches on each
fold's held-out part (first point = default) and the decision-threshold rule. ``make_head(name,
**params)`` builds an unfitted estimator; ``parse_head_params`` reads ``--param HEAD.KEY=VALUE``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import ParameterGrid

from mitoprobe.store.errors import ProtocolError


@dataclass(frozen=True)
class HeadSpec:
    """A head: its factory, the grid searched on the fold's held-out part (first = default), and
    the threshold rule (``val_youden``: maximise balanced accuracy on the held-out part;
    ``fixed_0.5``: the paper's)."""

    factory: Callable[..., BaseEstimator]
    grid: tuple[dict, ...] = field(default_factory=lambda: ({},))
    threshold_rule: str = "val_youden"
    uses_val: bool = False
    name: str = ""  # the ``head`` column of its runs
    source: object = None  # own heads: their ``own_heads.HeadSource`` (built-in heads: None, the package's code)


HEADS: dict[str, HeadSpec] = {}
_SWEEP_ORDER: dict[str, int] = {}  # built-in heads in ``--head all``, by position


def expand_grid(value, where: str) -> tuple[dict, ...]:
    """A grid as a tuple of points: a dict of lists expands through scikit-learn's ``ParameterGrid``
    (keys sorted, the last varying fastest; a single value stands for a list of one), a list of dicts
    is taken point by point, None is the defaults alone."""
    if value is None:
        return ({},)
    if isinstance(value, dict):
        lists = {k: v if isinstance(v, (list, tuple)) else [v] for k, v in value.items()}
        try:
            return tuple(ParameterGrid(lists)) or ({},)
        except ValueError as exc:
            raise ProtocolError(f"{where}: {exc}; give every key at least one value") from None
    if isinstance(value, (list, tuple)) and all(isinstance(p, dict) for p in value):
        return tuple(value) or ({},)
    raise ProtocolError(f"{where}: a grid is a dict of lists ({{'C': [0.1, 1]}}) or a list of dicts")


def register_head(name: str, *, grid=None, threshold_rule: str = "val_youden", uses_val: bool = False,
                  sweep_order: int | None = None):
    """Register the decorated factory as the built-in head ``name``. ``grid``: as :func:`expand_grid`;
    ``uses_val``: its estimator early-stops on the fold's held-out rows (``fit(X, y, X_val=, y_val=)``);
    ``sweep_order``: its place in ``--head all`` (``DEFAULT_HEADS``), None = on request only."""

    def decorate(factory: Callable[..., BaseEstimator]) -> Callable[..., BaseEstimator]:
        if name in HEADS:
            raise ValueError(f"head {name!r} is registered twice ({HEADS[name].factory.__module__}, "
                             f"{factory.__module__}); head names are the `head` column of runs")
        HEADS[name] = HeadSpec(factory, grid=expand_grid(grid, f"head {name}"), threshold_rule=threshold_rule,
                               uses_val=uses_val, name=name)
        if sweep_order is not None:
            _SWEEP_ORDER[name] = sweep_order
        return factory

    return decorate


def import_family_modules(package: str, path) -> None:
    """Import every module of ``package`` (its ``__path__``): each family module registers its heads as it
    is imported, so a new head is one new file, found without a list to edit."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def default_heads() -> tuple[str, ...]:
    """The heads of ``--head all``, in their sweep order."""
    return tuple(sorted(_SWEEP_ORDER, key=_SWEEP_ORDER.__getitem__))


def heads_help() -> str:
    """The built-in heads for a command's help: those of ``all``, then the ones run on request, each with
    its factory's first docstring line."""
    def first_line(spec: HeadSpec) -> str:
        line = ((spec.factory.__doc__ or "").strip().splitlines() or [""])[0].rstrip(".")
        return line[:1].lower() + line[1:]

    extra = "".join(f"; {n} = {first_line(HEADS[n])}" for n in sorted(HEADS) if n not in _SWEEP_ORDER)
    return f"'all' ({','.join(default_heads())}) or a comma list{extra}"


def make_head(name: str, **params) -> BaseEstimator:
    """An unfitted head. ``params`` go to the head (and its preprocessing, e.g. ``pca`` for lgbm/mlp)."""
    if name not in HEADS:
        raise ProtocolError(f"unknown head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name].factory(**params)


def parse_head_params(specs: list[str] | tuple[str, ...], heads: dict[str, HeadSpec] | None = None) -> dict[str, dict]:
    """``["torch_linear.lr=1e-3", "knn.n_neighbors=25"]`` -> ``{head: {key: value}}``; values are JSON
    (numbers, true/false, null) or else strings. Every head and key is checked by building the head.
    ``heads``: the heads this run knows besides the built-in ones (own heads, by name)."""
    known = {**HEADS, **(heads or {})}
    out: dict[str, dict] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        head, dot, key = name.strip().partition(".")
        if not (sep and dot and head and key):
            raise ProtocolError(f"--param {spec!r}: write HEAD.KEY=VALUE, e.g. torch_linear.lr=1e-3")
        if head not in known:
            raise ProtocolError(f"--param {spec!r}: unknown head {head!r}; choose from {sorted(known)}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(head, {})[key] = parsed
    for head, params in out.items():
        try:
            known[head].factory(**params)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"--param: head {head} has no parameter among {sorted(params)} ({exc}); "
                                f"its parameters: {sorted(_head_param_names(known[head]))}") from None
    return out


def _head_param_names(spec: HeadSpec) -> set[str]:
    """What ``spec.factory(**params)`` accepts: the factory's own keywords and its estimator's."""
    sig = inspect.signature(spec.factory).parameters
    names = {n for n, p in sig.items() if p.kind != p.VAR_KEYWORD}
    if any(p.kind == p.VAR_KEYWORD for p in sig.values()):
        est = spec.factory()
        last = est.steps[-1][1] if hasattr(est, "steps") else est
        names |= set(last.get_params(deep=False))
    return names


def positive_proba(estimator, X) -> np.ndarray:
    """P(y = 1) from a fitted head, whatever the column order."""
    classes = list(estimator.classes_)
    return estimator.predict_proba(X)[:, classes.index(1)]
