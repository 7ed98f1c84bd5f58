"""Your own head: a factory in a file or a module, run under the protocol like the built-in heads.

``--head path/to/heads.py:make_svm`` or ``--head mypkg.heads:make_svm`` names a callable that returns an
unfitted scikit-learn-compatible classifier with ``predict_proba``; its keyword arguments are the grid's
keys. The grid is searched on each fold's held-out part like the built-in heads' grids: ``--grid C=0.1,1,10``
or an attribute ``grid`` of the factory (a dict of lists, or a list of dicts). The Python API passes an
estimator object instead (``estimator_head``): it is cloned and its parameters set per grid point.

Identity: the family id records the head's *source* (``HeadSource``): the file's sha256 (and for a module,
its distribution's name and version), or for an estimator object its class, library version and
parameters. An edited head file is therefore a new family, never a silent mix; ``predict`` re-imports the
head from where it was and refuses when the source's sha256 changed. Code is imported, never unpickled.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mitoprobe.store.errors import HeadError, ProtocolError
from mitoprobe.store.hashing import bytes_sha256, file_sha256

from .head_calls import first_line, proba_problem
from .heads import HEADS, HeadSpec, expand_grid

OWN_THRESHOLD_RULE = "val_youden"  # as the built-in sklearn heads: the held-out part sets the threshold


def is_own_head_spec(head: str) -> bool:
    """``module:factory`` or ``path.py:factory`` (a built-in head is a bare name)."""
    return isinstance(head, str) and ":" in head


@dataclass(frozen=True)
class HeadSource:
    """What identifies a head's code (enters the family id) and where it was found (``where``: not identity)."""

    kind: str  # "file" | "module" | "estimator"
    name: str  # factory name, or the estimator's class (module.Class)
    sha256: str = ""  # the file's (file, module); the parameters' (estimator)
    dist: str = ""  # "package==version" when the code comes from an installed distribution
    where: str = field(default="", compare=False)  # the path or module spec (to re-import for predict)

    def identity(self) -> dict:
        return {k: v for k, v in dict(kind=self.kind, name=self.name, sha256=self.sha256, dist=self.dist).items() if v}


def _dist_of(module_name: str) -> str:
    """``name==version`` of the installed distribution providing ``module_name`` ('' when none)."""
    from importlib.metadata import packages_distributions, version

    top = module_name.split(".")[0]
    for dist in packages_distributions().get(top, []):
        try:
            return f"{dist}=={version(dist)}"
        except Exception:  # metadata without a version: identify by the file hash alone
            return ""
    return ""


def _import_factory(spec: str) -> tuple[Callable, HeadSource]:
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ProtocolError(f"--head {spec!r}: write MODULE:FACTORY or path/to/file.py:FACTORY")
    path = Path(where).expanduser()
    if where.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ProtocolError(f"--head {spec!r}: no file {path}")
        digest = file_sha256(path)
        mod_name = f"mitoprobe_own_head_{digest[:16]}"  # one module per content: an edited file is a new module
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            try:
                loader_spec.loader.exec_module(module)
            except Exception as exc:
                raise HeadError(f"--head {spec!r}: importing {path} failed: {first_line(exc)}") from exc
            sys.modules[mod_name] = module
        source = HeadSource("file", attr, digest, "", str(path.resolve()))
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise HeadError(f"--head {spec!r}: cannot import module {where!r}: {first_line(exc)}") from exc
        file = getattr(module, "__file__", None)
        source = HeadSource("module", f"{where}:{attr}", file_sha256(file) if file else "", _dist_of(where), spec)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ProtocolError(f"--head {spec!r}: {where} has no callable {attr!r}")
    return factory, source


def parse_grid(specs) -> dict | None:
    """``["C=0.1,1,10", "kernel=rbf,linear"]`` -> ``{"C": [0.1, 1, 10], "kernel": ["rbf", "linear"]}``
    (values JSON where they parse, else strings)."""
    if not specs:
        return None
    out = {}
    for s in specs:
        key, sep, values = s.partition("=")
        if not (sep and key.strip() and values.strip()):
            raise ProtocolError(f"--grid {s!r}: write KEY=V1,V2,... e.g. C=0.1,1,10")
        vals = []
        for v in values.split(","):
            try:
                vals.append(json.loads(v))
            except ValueError:
                vals.append(v.strip())
        out[key.strip()] = vals
    return out


def _uses_val(factory) -> bool:
    """Whether the factory's estimator takes the fold's held-out rows in ``fit`` (``X_val``/``y_val``)."""
    try:
        est = factory()
        return "X_val" in inspect.signature(est.fit).parameters
    except Exception:  # noqa: BLE001 - the check below reports a factory that cannot build
        return False


def own_head(spec: str, grid=None, name: str | None = None) -> HeadSpec:
    """The ``HeadSpec`` of ``module:factory`` / ``file.py:factory``; ``grid`` (dict of lists or list of dicts)
    overrides the factory's own ``grid`` attribute. Checked (``check_head``) before it is returned."""
    factory, source = _import_factory(spec)
    points = expand_grid(grid if grid is not None else getattr(factory, "grid", None), f"--head {spec!r} grid")
    head = HeadSpec(factory, grid=points, threshold_rule=OWN_THRESHOLD_RULE, uses_val=_uses_val(factory),
                    name=name or source.name.rpartition(":")[2], source=source)
    check_head(head, f"--head {spec}")
    return head


def estimator_head(estimator, name: str | None = None, grid=None) -> HeadSpec:
    """A head from an (unfitted) estimator object (the Python API): cloned, its grid point set by
    ``set_params``. Identified by its class, library version and parameters."""
    from sklearn.base import clone

    cls = type(estimator)
    module = cls.__module__
    params = estimator.get_params(deep=False)
    try:
        text = json.dumps(params, sort_keys=True, default=repr)
    except TypeError:
        text = repr(sorted(params.items()))
    source = HeadSource("estimator", f"{module}.{cls.__qualname__}", bytes_sha256(text.encode()),
                        _dist_of(module), "")

    def factory(**point):
        return clone(estimator).set_params(**point)

    head = HeadSpec(factory, grid=expand_grid(grid, f"{source.name} grid"), threshold_rule=OWN_THRESHOLD_RULE,
                    uses_val=_uses_val(factory), name=name or cls.__name__, source=source)
    check_head(head, source.name)
    return head


def check_head(head: HeadSpec, what: str) -> None:
    """Fit and predict probabilities on a tiny random sample at every grid point: one clear line when the
    factory does not build, does not fit, or does not give P(class) per row. (The same output checks run
    again on every fold and test set: ``head_calls``.) The user's exception is chained: ``-v`` shows it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.r_[np.zeros(20, np.int64), np.ones(20, np.int64)]
    X[y == 1] += 1.0
    for point in head.grid:
        try:
            est = head.factory(**point)
        except Exception as exc:
            raise HeadError(f"{what}: the factory failed with {point or 'no arguments'}: {first_line(exc)}") from exc
        if not hasattr(est, "predict_proba"):
            raise HeadError(f"{what}: {type(est).__name__} has no predict_proba (heads give probabilities; e.g. "
                            "SVC(probability=True), or wrap it in CalibratedClassifierCV)")
        try:
            est.fit(X, y)
            p = est.predict_proba(X)
            classes = list(getattr(est, "classes_", []))
        except Exception as exc:
            raise HeadError(f"{what}: fitting/predicting a 40-row sample failed at {point or 'its defaults'}: "
                            f"{first_line(exc)}") from exc
        problem = proba_problem(p, len(X), classes)
        if problem:
            raise HeadError(f"{what}: on a 40-row sample, {problem}; predict_proba must give P(class 0), "
                            "P(class 1) per row")
        if classes != [0, 1]:
            raise HeadError(f"{what}: classes_ must be [0, 1] after fitting 0/1 labels")


def resolve_head(head) -> HeadSpec:
    """A built-in head name, an own head spec (``module:factory``/``file.py:factory``) or a ``HeadSpec``."""
    if isinstance(head, HeadSpec):
        return head
    if head in HEADS:
        return HEADS[head]
    if is_own_head_spec(head):
        return own_head(head)
    raise ProtocolError(f"unknown head {head!r}; choose from {sorted(HEADS)}, or name your own as "
                        "MODULE:FACTORY or path/to/heads.py:FACTORY")


def head_from_record(source: dict, where: str) -> HeadSpec:
    """The own head a family recorded, imported again from where it was, refused when its code changed."""
    kind = source.get("kind")
    if kind == "estimator":
        raise ProtocolError(f"the family's head is an estimator object ({source.get('name')}) passed through the "
                            "Python API: refit it there (mitoprobe.open(...).probe(..., estimator=...))")
    if not where:
        raise ProtocolError("the family's own head did not record where it came from; probe it again")
    head = own_head(where if kind == "module" else f"{where}:{source['name']}")
    now = head.source.identity()
    if now != source:
        changed = ", ".join(k for k in sorted(set(now) | set(source)) if now.get(k) != source.get(k))
        raise ProtocolError(f"the head {source.get('name')} at {where} changed since the run ({changed} differ): "
                            "its family would not be the same model. Probe it again (a new family), or restore the file")
    return head
