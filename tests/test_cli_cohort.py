"""Bring your own cohort, end to end and from the CLI only (issue 12's "done when"): a held-out cohort
of JPEG and PNG patches at sizes other than 128 px, some unlabelled, imported from a manifest, embedded
with ``handcrafted`` and with a recipe file pointing at local ``.safetensors`` weights, scored as an
extra test set, then ``predict`` and ``search`` CSVs with one row per patch."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from conftest import make_six_slide_store, run_cli

RECIPE = """\
name = "tinynet.mylab"
arch = "mobilenetv3_small_050"
weights = "tinynet.safetensors"
sha256 = "{sha}"
input_size = 64
resize = 64
outputs = ["pooled"]
precision = "fp32"
note = "a lab's own checkpoint (random weights here)"

[kwargs]
num_classes = 0
"""


@pytest.fixture
def recipe_file(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    weights = tmp_path / "models" / "tinynet.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    path = weights.parent / "tinynet.toml"
    path.write_text(RECIPE.format(sha=hashlib.sha256(weights.read_bytes()).hexdigest()))
    return path


def test_a_cohort_from_manifest_to_predictions_and_neighbours(tmp_path, monkeypatch, capsys, recipe_file):
    st = make_six_slide_store(tmp_path / "six")
    s = ("--store", str(st.root))

    def cli(*args):
        code, out = run_cli(monkeypatch, capsys, *args)
        assert code == 0, out
        return out

    cli("data", "example-cohort", str(tmp_path / "cohort"))
    cli("data", "import", "--manifest", str(tmp_path / "cohort/manifest.csv"), "--dataset", "MyLab", *s)
    cli("embed", "--model", "handcrafted", *s)
    out = cli("embed", "--recipe", str(recipe_file), *s)
    assert "tinynet.mylab" in out
    assert "tinynet.mylab" in cli("embed", "--list", *s)
    for model in ("handcrafted", "tinynet.mylab"):
        cli("probe", "--model", model, "--head", "logreg", *s)
    board = cli("report", "--format", "csv", "--no-paper", *s)
    rows = pd.read_csv(__import__("io").StringIO(board))
    assert {"AMi-Br-test", "AtNorM-Br", "AtNorM-MD", "MyLab"} <= set(rows["test_set"])
    assert set(rows.loc[rows["test_set"] == "MyLab", "model"]) >= {"handcrafted", "tinynet.mylab"}

    n_patches = len(pd.read_csv(tmp_path / "cohort/manifest.csv"))
    for model in ("handcrafted", "tinynet.mylab"):
        preds = tmp_path / f"preds-{model}.csv"
        cli("predict", "--model", model, "--head", "logreg", "--dataset", "MyLab", "--out", str(preds), *s)
        p = pd.read_csv(preds)
        assert len(p) == n_patches and p["patch_id"].is_unique
        assert p["p_atypical"].between(0, 1).all() and p["label"].isna().sum() == 4
        assert {"family_id", "recipe_id", "threshold", "prediction"} <= set(p.columns)
        assert set(p["family_label"]) == {f"{model} · logreg"}  # as the report and the dashboard name it
    nb = tmp_path / "neighbours.csv"
    cli("search", "--model", "tinynet.mylab", "--dataset", "MyLab", "--k", "5", "--out", str(nb), *s)
    n = pd.read_csv(nb)
    assert len(n) == n_patches and n["patch_id"].is_unique
    assert (n["n_neighbours"] == 5).all() and set(n["nn1_dataset"]) == {"AMi-Br"}
