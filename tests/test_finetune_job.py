"""Fine-tuning on CPU with a tiny random-weight ViT (32 px) through the recipe machinery:
one fold end to end into the results tables and the report, frozen base + trainable adapters,
resume after a kill, checkpoint reload, fine-tuned embedders and their fold restriction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tiny_paper import tiny_vit
from conftest import make_six_slide_store
from mitoprobe.finetune import FinetuneConfig, finetune, parse_folds
from mitoprobe.finetune.job import check_device
from mitoprobe.finetune.model import build_classifier, load_weights, parameter_counts
from mitoprobe.finetune.train import DONE_FILE, MODEL_FILE, STATE_FILE, Runtime, predict_proba
from mitoprobe.embedder.recipes import get_recipe
from mitoprobe.store import Store
from mitoprobe.store.errors import FinetuneError, ProtocolError

TINY = "vit_ft_test.random"
FAST = dict(max_epochs=2, max_steps=2, batch_size=4)

tiny_vit(TINY)  # registered at import: every test here builds it


@pytest.fixture(scope="module")
def ft_store(tmp_path_factory) -> Store:
    torch.set_num_threads(1)
    return make_six_slide_store(tmp_path_factory.mktemp("ft"))


@pytest.fixture(scope="module")
def lora_run(ft_store):
    return finetune(ft_store, FinetuneConfig.paper(TINY, "lora", **FAST), folds="0", progress=False, n_boot=10)


def test_config_defaults_are_the_papers():
    c = FinetuneConfig.paper("virchow2.hf", "lora")
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets) == (8, 16, 0.3, ("qkv", "proj", "fc1", "fc2"))
    assert (c.lr, c.weight_decay, c.batch_size, c.max_epochs, c.early_stop) == (5e-5, 1e-5, 8, 100, 10)
    assert (c.lr_factor, c.lr_patience, c.loss, c.sampler, c.norm) == (0.5, 3, "bce", "weighted", "half")
    assert c.crop_scale == (0.8, 1.0) and c.color_jitter == (0.2, 0.2, 0.2, 0.1) and c.options() == {}
    assert (c.precision, c.eval_resize, c.eval_interpolation) == ("fp32", 224, "bilinear")
    full = FinetuneConfig.paper("swin_base.hf", "full")
    assert (full.lr, full.early_stop, full.norm, full.train_crop) == (5e-5, 15, "imagenet", "last")
    assert full.options() == {}
    assert FinetuneConfig.paper(TINY, "lora", loss="focal", tta="rot4").options() == {"loss": "focal", "tta": "rot4"}
    assert parse_folds("1..5", 5) == [0, 1, 2, 3, 4] and parse_folds("0,3", 5) == [0, 3]
    with pytest.raises(FinetuneError):
        parse_folds("7", 5)
    with pytest.raises(FinetuneError):
        FinetuneConfig.paper(TINY, "lora", loss="mse")


def test_lora_freezes_base_and_trains_adapters_and_head():
    model, _ = build_classifier(FinetuneConfig.paper(TINY, "lora"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= trainable
    # every targeted layer got adapters: qkv/proj/fc1/fc2 in both blocks, plus patch_embed.proj
    wrapped = {n.split(".lora_A")[0] for n in trainable if ".lora_A." in n}
    assert {f"backbone.blocks.{b}.{m}" for b in (0, 1) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")} <= wrapped
    counts = parameter_counts(model)
    r = 8
    # LoRA adds r * (in + out) per Linear: qkv 32->96, proj 32->32, fc1 32->128, fc2 128->32
    per_block = r * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    patch_embed = r * 3 * 8 * 8 + 32 * r  # conv LoRA: A (r, 3, 8, 8), B (32, r, 1, 1)
    assert counts["trainable"] == 2 * per_block + patch_embed + 33
    assert counts["total"] - counts["trainable"] == sum(
        p.numel() for n, p in model.named_parameters() if "lora_" not in n and not n.startswith("head."))
    full, _ = build_classifier(FinetuneConfig.paper(TINY, "full"))
    c = parameter_counts(full)
    lora_params = counts["trainable"] - 33
    assert c["trainable"] == c["total"] == counts["total"] - lora_params


def test_one_fold_end_to_end_into_results_and_report(ft_store, lora_run):
    from mitoprobe.classifiers.report import leaderboard

    assert lora_run.folds_done == [0] and not lora_run.ensemble and lora_run.rows_appended == 3
    runs = ft_store.results.read("runs")
    mine = runs[runs["family"] == "finetune"]
    assert set(mine["test_set"]) == {"AMi-Br-test", "AtNorM-Br", "AtNorM-MD"}
    assert (mine["head"] == "lora").all() and (mine["fold"] == 0).all() and (mine["model"] == TINY).all()
    assert mine["auroc"].between(0, 1).all() and mine["balanced_accuracy"].between(0, 1).all()
    cfg = json.loads(mine["config_json"].iloc[0])
    assert cfg["config"]["lora_r"] == 8 and cfg["checkpoint_sha256"] and cfg["epochs"] == 2
    preds = ft_store.results.read("predictions")
    assert set(mine["run_id"]) <= set(preds["run_id"])
    board = leaderboard(ft_store)
    ours = board[(board["source"] == "mitoprobe") & (board["model"] == TINY)]
    assert len(ours) == 3 and (ours["head"] == "lora").all()
    assert {"lora", "end_to_end"} <= set(board.loc[board["source"] == "paper", "family"])
    # the same command again: nothing trained, nothing appended
    again = finetune(ft_store, FinetuneConfig.paper(TINY, "lora", **FAST), folds="0", progress=False, n_boot=10)
    assert again.rows_appended == 0 and len(ft_store.results.read("runs")) == len(runs)
    fold_dir = lora_run.run_dir / "fold0"
    assert (fold_dir / MODEL_FILE).is_file() and not (fold_dir / STATE_FILE).exists()
    assert not list(fold_dir.glob("last-e*")) and not list(fold_dir.glob("best-e*"))


def test_checkpoint_holds_adapters_and_head_and_reproduces_predictions(ft_store, lora_run):
    from safetensors.torch import load_file

    from mitoprobe.embedder.factory import preprocess

    fold_dir = lora_run.run_dir / "fold0"
    sd = load_file(str(fold_dir / MODEL_FILE))
    assert sd and all("lora_" in k or k.startswith("head.") for k in sd)
    cfg = FinetuneConfig.paper(TINY, "lora", **FAST)
    model, recipe = build_classifier(cfg)
    preds = pd.read_parquet(fold_dir / "predictions.parquet")
    test = preds[preds["split"] == "AtNorM-Br"]
    images = ft_store.images(list(test["patch_id"]))
    tf = preprocess(recipe, *cfg.mean_std())
    before = predict_proba(model, [images[p] for p in test["patch_id"]], tf, ("none",), Runtime(progress=False))
    load_weights(model, "lora", fold_dir / MODEL_FILE)
    after = predict_proba(model, [images[p] for p in test["patch_id"]], tf, ("none",), Runtime(progress=False))
    np.testing.assert_allclose(after, test["probability"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(before, after)  # the trained adapters/head change the output


@pytest.mark.parametrize("batch_augment", [False, True])
def test_resume_continues_from_saved_epoch_and_matches_uninterrupted(ft_store, tmp_path, batch_augment):
    cfg = FinetuneConfig.paper(TINY, "lora", max_epochs=3, max_steps=2, batch_size=4, seed=3,
                               batch_augment=batch_augment)

    class Kill(Exception):
        pass

    def kill_after_first(epoch):
        if epoch == 1:
            raise Kill

    with pytest.raises(Kill):
        finetune(ft_store, cfg, folds="1", progress=False, n_boot=10, out=tmp_path / "a", on_epoch=kill_after_first)
    state = torch.load(tmp_path / "a" / "fold1" / STATE_FILE, weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1 and "optimizer" in state and "scheduler" in state
    # one resume state (the epoch's weights, written once: best-e1 if it improved, else last-e1, + optimizer);
    # LoRA files hold adapters + head
    files = sorted(f.name for f in (tmp_path / "a" / "fold1").iterdir())
    assert state["weights_file"] in ("best-e1.safetensors", "last-e1.safetensors")
    assert [f for f in files if f.endswith(".safetensors")] == [state["weights_file"]]
    last = load_file(str(tmp_path / "a" / "fold1" / state["weights_file"]))
    assert last and all("lora_" in k or k.startswith("head.") for k in last)
    seen = []
    resumed = finetune(ft_store, cfg, folds="1", progress=False, n_boot=10, out=tmp_path / "a", on_epoch=seen.append)
    assert seen == [2, 3]  # continued after the saved epoch, did not restart
    straight = finetune(ft_store, cfg, folds="1", progress=False, n_boot=10, out=tmp_path / "b")
    h1, h2 = resumed.records[1]["history"], straight.records[1]["history"]
    assert [e["epoch"] for e in h1] == [1, 2, 3]
    np.testing.assert_allclose([e["train_loss"] for e in h1], [e["train_loss"] for e in h2], rtol=1e-5)
    assert resumed.records[1]["checkpoint_sha256"] == straight.records[1]["checkpoint_sha256"]


def test_full_finetune_and_cpu_guard(ft_store, tmp_path):
    with pytest.raises(FinetuneError, match="--allow-cpu"):
        check_device("cpu", get_recipe("virchow2.random"), None, allow_cpu=False)
    assert check_device("cpu", get_recipe(TINY), None, allow_cpu=False)[0] == "cpu"
    cfg = FinetuneConfig.paper(TINY, "full", max_epochs=1, max_steps=1, batch_size=4, dihedral=True, hed=0.05,
                               loss="focal", sampler="shuffle", tta="rot4", threshold="val_youden")
    s = finetune(ft_store, cfg, folds="2", progress=False, n_boot=10, out=tmp_path / "full")
    rec = s.records[2]
    assert rec["parameters"]["trainable"] == rec["parameters"]["total"]
    runs = ft_store.results.read("runs")
    row = runs[(runs["head"] == "full") & (runs["fold"] == 2)].iloc[0]
    assert json.loads(row["options"]) == {"dihedral": True, "hed": 0.05, "loss": "focal", "sampler": "shuffle",
                                          "tta": "rot4", "threshold": "val_youden", "batch_size": 4,
                                          "max_epochs": 1, "max_steps": 1}


def test_finetuned_fold_as_embedder_is_probed_under_its_fold_only(ft_store, lora_run):
    from mitoprobe import embedder
    from mitoprobe.classifiers.protocol import load_protocol
    from mitoprobe.classifiers.runner import fit_fold, load_features, resolve_heads, sweep

    key = lora_run.run_key[:8]
    s = embedder.embed(ft_store, f"ft:{key}/fold0", device="cpu", num_workers=0, progress=False)
    sha = json.loads((lora_run.run_dir / "fold0" / DONE_FILE).read_text())["checkpoint_sha256"]
    assert s.name == f"ft-{key}-fold0.{sha[:8]}" and s.rows_written == len(ft_store.patches(columns=["patch_id"]))
    base_id = embedder.recipe_id_of(TINY)
    assert s.recipe_id != base_id
    rows = sweep(ft_store, s.name, heads=["logreg"], n_boot=10, show_progress=False)
    assert set(rows["fold"]) == {0}  # fold 0 only, and no fold ensemble
    feats = load_features(ft_store, s.name)
    proto = load_protocol(ft_store)
    with pytest.raises(ProtocolError, match="leakage"):
        fit_fold(resolve_heads("logreg")[0], {}, feats, proto.fold_data(1), feats.locate(proto.train["patch_id"]))


def test_a_run_is_labelled_ft_model_method_run8_or_by_its_name(ft_store, lora_run, tmp_path, caplog):
    """Tables label a fine-tuning run ``ft <model> <method> <run8>``; ``name=`` (``finetune --name``) is written
    to a new run's config.json only when given, so an unnamed run's config (and family id) is unchanged."""
    from mitoprobe.classifiers.labels import family_labels

    assert "name" not in json.loads((lora_run.run_dir / "config.json").read_text())
    labels = family_labels(ft_store.results.read("runs"))
    assert labels[lora_run.family_id] == f"ft {TINY} lora {lora_run.run_key[:8]}"
    cfg = FinetuneConfig.paper(TINY, "lora", **FAST)
    with pytest.raises(ProtocolError, match="--name"):
        finetune(ft_store, cfg, folds="3", progress=False, n_boot=10, out=tmp_path / "bad", name="x" * 41)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    named = finetune(ft_store, cfg, folds="3", progress=False, n_boot=10, out=tmp_path / "named", name="tiny lora")
    assert json.loads((named.run_dir / "config.json").read_text())["name"] == "tiny lora"
    assert family_labels(ft_store.results.read("runs"))[named.family_id] == "tiny lora"
    with caplog.at_level("WARNING"):  # a started run keeps its label
        again = finetune(ft_store, cfg, folds="3", progress=False, n_boot=10, out=tmp_path / "named", name="other")
    assert again.rows_appended == 0 and "keeps that label" in caplog.text
    assert family_labels(ft_store.results.read("runs"))[named.family_id] == "tiny lora"
