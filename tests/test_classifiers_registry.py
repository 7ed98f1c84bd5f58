"""The head registry: built-in heads keep their identity, grids expand as scikit-learn's ParameterGrid,
and a new family module registers itself with no other edit."""

from __future__ import annotations

import sys

import pytest

import mitoprobe.classifiers.heads as heads
from mitoprobe.classifiers.heads import registry
from mitoprobe.store.errors import ProtocolError
from mitoprobe.store.hashing import config_hash


def test_the_built_in_heads_identity_did_not_move():
    """What a family id records of a built-in head (grid, threshold rule) and how it runs, pinned: the
    value the single-module heads.py gave, so no stored family changes id with the registry."""
    spec = {n: dict(grid=list(s.grid), threshold_rule=s.threshold_rule, uses_val=s.uses_val, name=s.name,
                    source=s.source) for n, s in heads.HEADS.items()}
    assert config_hash(spec) == "96aa895e119ec070"
    assert heads.DEFAULT_HEADS == ("logreg", "lgbm", "knn", "simpleshot", "mlp")
    assert heads.HEADS["logreg"].grid == ({"C": 1e-4}, {"C": 1e-3}, {"C": 1e-2}, {"C": 1e-1})


def test_grids_expand_as_parameter_grid():
    assert heads.expand_grid({"b": [1, 2], "a": (3, 4)}, "g") == \
        ({"a": 3, "b": 1}, {"a": 3, "b": 2}, {"a": 4, "b": 1}, {"a": 4, "b": 2})  # sorted keys, last fastest
    assert heads.expand_grid({"C": 0.5, "kernel": "rbf"}, "g") == ({"C": 0.5, "kernel": "rbf"},)  # single values
    assert heads.expand_grid([{"C": [1, 2]}, {"C": 3}], "g") == ({"C": [1, 2]}, {"C": 3})  # points, as given
    assert heads.expand_grid(None, "g") == heads.expand_grid({}, "g") == heads.expand_grid([], "g") == ({},)
    for bad in ({"C": []}, "C=1", [{"C": 1}, 2]):
        with pytest.raises(ProtocolError, match="^g: "):
            heads.expand_grid(bad, "g")


NEW_HEAD = '''
from sklearn.linear_model import LogisticRegression

from mitoprobe.classifiers.heads.registry import register_head


@register_head("tmp_extra", grid={"C": [0.1, 1.0]}, sweep_order=99)
def tmp_extra(C=1.0):
    return LogisticRegression(C=C)


@register_head("tmp_on_request")
def tmp_on_request():
    """A head run only when named."""
    return LogisticRegression()
'''


def test_a_new_family_module_is_one_file(tmp_path, monkeypatch):
    (tmp_path / "tmp_family.py").write_text(NEW_HEAD)
    monkeypatch.setattr(registry, "HEADS", dict(registry.HEADS))
    monkeypatch.setattr(registry, "_SWEEP_ORDER", dict(registry._SWEEP_ORDER))
    monkeypatch.setattr(heads, "__path__", [*heads.__path__, str(tmp_path)])
    try:
        registry.import_family_modules(heads.__name__, heads.__path__)
        assert registry.HEADS["tmp_extra"].grid == ({"C": 0.1}, {"C": 1.0})
        assert registry.default_heads() == (*heads.DEFAULT_HEADS, "tmp_extra")
        assert "tmp_on_request = a head run only when named" in registry.heads_help()
        assert registry.make_head("tmp_extra", C=0.1).C == 0.1
        with pytest.raises(ValueError, match="registered twice"):
            registry.register_head("tmp_extra")(lambda: None)
    finally:
        sys.modules.pop(f"{heads.__name__}.tmp_family", None)
    assert "tmp_extra" not in heads.HEADS


def test_the_cli_help_lists_the_registry():
    from mitoprobe.commands.probe import probe

    text = next(p.help for p in probe.params if p.name == "heads")
    assert all(name in text for name in heads.HEADS) and ",".join(heads.DEFAULT_HEADS) in text
