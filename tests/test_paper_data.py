"""The paper as data (``mitoprobe.paper``): the lowest layer, consistent with itself and with the scripts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mitoprobe.paper as P
from mitoprobe.paper.finetune import E2E_ENTRIES, LORA_ENTRIES, recipe_stem
from mitoprobe.paper.probe import PAPER_SCRIPT_PARAMS_BY_FAMILY, PROBE_SCRIPTS


def test_importing_the_paper_loads_nothing_else_of_mitoprobe():
    code = ("import sys, mitoprobe.paper; "
            "print(sorted(m for m in sys.modules if m.startswith('mitoprobe') and not m.startswith('mitoprobe.paper')),"
            " 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "['mitoprobe'] False"


def test_the_fold_set_name_is_made_and_read_in_one_place():
    name = P.finetuned_set_name("1a2b3c4d5e6f7a8b", 3, "0123abcd" + "f" * 56)
    assert name == "ft-1a2b3c4d-fold3.0123abcd" and P.is_finetuned_set(name)
    assert P.FINETUNED_SET.match(name).groupdict() == {"run": "1a2b3c4d", "fold": "3", "sha": "0123abcd"}
    assert not P.is_finetuned_set("ft-1a2b3c4d-folds") and not P.is_finetuned_set("handcrafted")
    assert P.pooled_model_name(name) == "ft-1a2b3c4d-folds"
    assert P.pooled_model_name(name + "+handcrafted") == "ft-1a2b3c4d-folds+handcrafted"
    assert P.pooled_model_name("uni.hf") == "uni.hf"


def test_the_model_lists_match_the_scripts_and_the_table():
    assert set(P.FOUNDATION) == {e.models[0] for e in LORA_ENTRIES} == {s.model for s in PROBE_SCRIPTS}
    assert set(P.END_TO_END) == {e.models[0] for e in E2E_ENTRIES}
    assert {recipe_stem(m) for m in P.PAPER_MODEL_NAMES} == set(P.FOUNDATION + P.END_TO_END)
    table = P.paper_results()
    assert set(P.PAPER_MODEL_NAMES.values()) == set(table["model"])
    assert set(P.PAPER_HEADS) == set(table["family"])
    assert {f for fams in P.PAPER_COMPARABLE.values() for f in fams} <= set(table["family"])


def test_probe_scripts_give_one_setting_per_recipe_family():
    """``paper_probe_params`` is asked by recipe family: the scripts of one family must agree."""
    for family in {s.family for s in PROBE_SCRIPTS}:
        assert len({tuple(sorted(s.overrides().items())) for s in PROBE_SCRIPTS if s.family == family}) == 1, family
    assert PAPER_SCRIPT_PARAMS_BY_FAMILY == {"gigapath": {"lr": 1e-3, "weight_decay": 1e-4}}
    assert all(set(s.values()) == set(P.PAPER_PROBE_PARAMS) for s in PROBE_SCRIPTS)


PROBE_TOKENS = {"lr": "lr=", "weight_decay": "weight_decay=", "batch_size": "batch_size=", "max_epochs": "num_epochs=",
                "patience": "_patience=", "lr_factor": "factor=", "lr_patience": "patience=", "min_lr": "min_lr="}


@pytest.fixture(scope="module")
def scripts() -> Path:
    """A checkout of the paper's scripts (``MITOPROBE_PAPER_SCRIPTS``), else the test is skipped."""
    path = Path(os.environ.get("MITOPROBE_PAPER_SCRIPTS", "/nonexistent"))
    if not path.is_dir():
        pytest.skip("set MITOPROBE_PAPER_SCRIPTS to a checkout of DeepMicroscopy/AMi-Br_Benchmark at 3acf4da")
    return path


@pytest.mark.parametrize("script", PROBE_SCRIPTS, ids=lambda s: s.model)
def test_every_probe_setting_is_on_the_line_it_cites(script, scripts):
    text = (scripts / script.script).read_text().splitlines()
    for name, s in script.settings.items():
        line = text[int(s.line) - 1].split("#")[0].replace(" ", "")
        found = re.search(re.escape(PROBE_TOKENS[name]) + r"([0-9.eE+-]+)", line)
        assert found and float(found[1]) == s.value, (script.script, name, line)
