"""The offline preset (a small CNN trained from scratch on CPU): it builds, trains a few steps through
``finetune()``, and none of its selection steps (checkpoint, threshold, ensemble) reads a test label."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_six_slide_store

from mitoprobe.finetune import FinetuneConfig, finetune
from mitoprobe.finetune.model import build_classifier, parameter_counts
from mitoprobe.finetune.precision import training_precision
from mitoprobe.finetune.train import DONE_FILE, PREDICTIONS_FILE
from mitoprobe.store import Store
from mitoprobe.store.errors import FinetuneError

# Two epochs of two steps each: enough to exercise the schedule, selection, TTA and threshold.
FAST = dict(max_epochs=2, max_steps=2, batch_size=8)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    torch.set_num_threads(1)
    return make_six_slide_store(tmp_path_factory.mktemp("offline"))


def _store_copy(st: Store, tmp_path, name: str) -> Store:
    return Store(shutil.copytree(st.root, tmp_path / name))


def test_offline_preset_is_a_small_cnn_with_its_settings():
    cfg = FinetuneConfig.preset("offline")
    assert cfg.model == "offline_cnn64.random" and cfg.method == "full" and cfg.batch_augment
    assert cfg.targets == "votes" and cfg.aux_subtypes == 1.0
    assert (cfg.dihedral, cfg.tta, cfg.threshold, cfg.crop_from, cfg.schedule) == (True, "rot4", "val_youden", "view",
                                                                                    "cosine")
    assert cfg.options()["schedule"] == "cosine" and "model" not in cfg.options()
    assert FinetuneConfig.preset("offline", max_epochs=3, ema=None).max_epochs == 3
    model, recipe = build_classifier(cfg)
    assert parameter_counts(model)["total"] < 5_000_000
    x = torch.zeros(2, 3, recipe.input_size, recipe.input_size)
    assert model(x).shape == (2,)
    with pytest.raises(FinetuneError):
        FinetuneConfig.preset("nope")
    # fields added later are left out of the hash at their defaults: older runs keep their keys
    assert "ema" not in FinetuneConfig.paper("virchow2.hf").to_dict() and "ema" in cfg.with_(ema=0.9).to_dict()


def test_a_run_seed_changes_a_from_scratch_networks_start_and_seed_0_keeps_the_recipes():
    """``run --full --seed N`` measures the seed spread only if the seed reaches the backbone's random init."""
    from mitoprobe import embedder

    def first_conv(seed):
        model, _ = build_classifier(FinetuneConfig.preset("offline", seed=seed))
        return next(p for n, p in model.named_parameters() if n.endswith("weight")).detach().clone()

    recipe_init, _ = embedder.build("offline_cnn64.random")
    own = next(p for n, p in recipe_init.backbone.named_parameters() if n.endswith("weight"))
    assert torch.equal(first_conv(0), own)  # seed 0: the recipe's own start, as every earlier run
    assert not torch.equal(first_conv(1), own) and torch.equal(first_conv(1), first_conv(1))


def test_offline_preset_trains_on_the_tiny_store(bench, tmp_path):
    st = _store_copy(bench, tmp_path, "train")
    cfg = FinetuneConfig.preset("offline", **FAST, ema=0.9, mixup=0.2)
    s = finetune(st, cfg, folds="0", progress=False, n_boot=10)
    rec = s.records[0]
    assert s.folds_done == [0] and rec["epochs"] == 2 and len(rec["history"]) == 2
    # the preset allows bf16 on CPU; it is used only where the CPU has it natively, and recorded
    assert rec["precision"] == training_precision("cpu", True) and rec["cpu_capability"]
    from mitoprobe.classifiers import metrics as M

    preds = pd.read_parquet(s.run_dir / "fold0" / PREDICTIONS_FILE)
    val = preds[preds["split"] == "val"].merge(st.patches(columns=["patch_id", "y"]), on="patch_id")
    assert rec["threshold"] == pytest.approx(M.best_threshold(val["y"].to_numpy(), val["probability"].to_numpy()))
    lrs = [h["lr"] for h in rec["history"]]
    assert lrs[1] < lrs[0] <= cfg.lr  # cosine decay after the warm-up epoch
    runs = st.results.read("runs")
    assert set(runs["head"]) == {"full"} and set(runs["fold"]) == {0}
    assert json.loads(runs["options"].iloc[0])["crop_from"] == "view"


def test_no_finetune_selection_step_reads_a_test_label(bench, tmp_path, monkeypatch):
    """Permute every test label: the selected checkpoint, threshold and every held-out/test probability
    stay identical (fold and ensemble), while the test metrics move (so labels were really changed). The
    same holds downstream of fine-tuning: a probe, the late fusions of the CNN with it (mean and stacked:
    thresholds, stacker weights, fused probabilities) and the held-out ranking that names the best family."""
    from mitoprobe import embedder
    from mitoprobe.classifiers import fusion
    from mitoprobe.classifiers import runner as probe_runner
    from mitoprobe.finetune import job as finetune_job

    real_load = finetune_job.load_protocol

    def runs_of(st: Store, poison: bool):
        def load(store, *args, **kwargs):
            proto = real_load(store, *args, **kwargs)
            if not poison:
                return proto
            rng = np.random.default_rng(0)
            return replace(proto, tests={name: replace(ts, y=rng.permutation(ts.y)) for name, ts in proto.tests.items()})

        for module in (finetune_job, probe_runner, fusion):  # the names each selection path calls
            monkeypatch.setattr(module, "load_protocol", load)
        cfg = FinetuneConfig.preset("offline", max_epochs=2, max_steps=1, batch_size=8, tta="rot4", cpu_bf16=False)
        s = finetune(st, cfg, progress=False, n_boot=10)  # all five folds, so the ensemble's threshold is made too
        embedder.embed(st, "handcrafted", device="cpu", num_workers=0, progress=False)
        probe_runner.sweep(st, "handcrafted", heads=["logreg"], n_boot=10, show_progress=False)
        for rule in ("mean", "stack"):
            fusion.fuse(st, [s.family_id, "handcrafted:logreg"], rule=rule, n_boot=10)
        done = [json.loads((s.run_dir / f"fold{k}" / DONE_FILE).read_text()) for k in range(5)]
        sel = [(d["best_epoch"], d["threshold"], d["checkpoint_sha256"]) for d in done]
        preds = pd.concat([pd.read_parquet(s.run_dir / f"fold{k}" / PREDICTIONS_FILE) for k in range(5)])
        runs = st.results.read("runs").sort_values(["family", "head", "fold", "test_set"])
        stored = st.results.read("predictions")
        fused = stored[stored["run_id"].isin(set(runs.loc[runs["family"] == "fusion", "run_id"]))]
        fused = fused.sort_values(["run_id", "split", "test_set", "patch_id"])["probability"].to_numpy()
        weights = [json.loads(c).get("weights") for c in runs.loc[runs["family"] == "fusion", "config_json"]]
        best = fusion.rank_by_heldout(runs)[["model", "head", "heldout_auroc"]]
        return sel, preds["probability"].to_numpy(), runs, fused, weights, best

    sel_a, p_a, runs_a, fused_a, w_a, best_a = runs_of(_store_copy(bench, tmp_path, "clean"), False)
    sel_b, p_b, runs_b, fused_b, w_b, best_b = runs_of(_store_copy(bench, tmp_path, "poisoned"), True)
    assert sel_a == sel_b
    np.testing.assert_array_equal(p_a, p_b)
    np.testing.assert_array_equal(runs_a["threshold"].to_numpy(), runs_b["threshold"].to_numpy())
    assert -1 in set(runs_a["fold"])  # the fold ensemble's threshold was checked as well
    assert set(runs_a["family"]) == {"finetune", "probe", "fusion"} and set(runs_a["head"]) >= {"mean", "stack"}
    np.testing.assert_array_equal(fused_a, fused_b)
    assert w_a == w_b and any(w for w in w_a)  # the stacker's weights
    assert best_a.equals(best_b) and len(best_a) == 4
    assert not np.allclose(runs_a["balanced_accuracy"].to_numpy(), runs_b["balanced_accuracy"].to_numpy())


def test_run_full_offline_probes_fold_vectors_alone_and_with_handcrafted(bench, tmp_path):
    """`mitoprobe run --full`'s offline stage on one fold: the fold's checkpoint becomes an embedder whose
    vectors are probed under fold 0 only, alone and concatenated with the handcrafted features, and the
    report pools fold sets into one ``ft-<run>-folds`` row."""
    from mitoprobe import embedder
    from mitoprobe.classifiers.report import leaderboard
    from mitoprobe.classifiers.runner import load_features
    from mitoprobe.main_job import run_offline_full

    st = _store_copy(bench, tmp_path, "full")
    embedder.embed(st, "handcrafted", device="cpu", num_workers=0, progress=False)
    cfg = FinetuneConfig.preset("offline", max_epochs=2, max_steps=1, batch_size=8)
    timings = run_offline_full(st.root, folds="0", heads=("logreg",), num_workers=0, config=cfg, seed=3)
    # one fold: no fold ensemble, so no fusion (fusions need every fold)
    assert set(timings) == {"embed morphology", "probe morphology", "finetune offline (5 folds)",
                            "embed fold checkpoints", "probe fold checkpoints"}
    runs = st.results.read("runs")
    probed = runs[(runs["family"] == "probe") & (runs["model"] != "morphology")]
    assert set(runs.loc[runs["model"] == "morphology", "head"]) == {"logreg"}
    names = set(probed["model"])
    assert len(names) == 2 and any(n.endswith("+handcrafted") for n in names)
    assert set(probed["fold"]) == {0}  # fold-0 vectors: fold 0 only, no ensemble
    assert set(runs.loc[runs["family"] == "probe", "seed"]) == {3}  # --seed reaches every probe
    both = load_features(st, next(n for n in names if n.endswith("+handcrafted")))
    alone = load_features(st, next(n for n in names if not n.endswith("+handcrafted")))
    assert both.X.shape[1] == alone.X.shape[1] + 57 and both.only_fold == 0
    board = leaderboard(st, with_paper=False)
    assert any(m.startswith("ft-") and "-folds" in m for m in board["model"])


def test_finetune_rows_keep_heldout_and_out_of_fold_predictions(bench, tmp_path):
    """Like the probes, fine-tuning runs store their held-out probabilities (split=val): each fold's
    held-out part, and for the ensemble every training patch's out-of-fold probability."""
    st = _store_copy(bench, tmp_path, "heldout")
    cfg = FinetuneConfig.preset("offline", max_epochs=1, max_steps=1, batch_size=8, tta="none", cpu_bf16=False)
    finetune(st, cfg, progress=False, n_boot=10)
    preds = st.results.read("predictions")
    val = preds[preds["split"] == "val"]
    folds = st.read_folds().set_index("patch_id")["fold"]
    per_fold = val[val["fold"] >= 0]
    assert (per_fold["fold"].to_numpy() == folds.reindex(per_fold["patch_id"]).to_numpy()).all()
    oof = val[val["fold"] == -1].set_index("patch_id")["probability"]
    assert len(oof) == len(folds) and oof.index.is_unique
    np.testing.assert_allclose(oof.reindex(per_fold["patch_id"]).to_numpy(), per_fold["probability"].to_numpy())


def test_vote_targets_are_the_experts_fractions_of_training_patches_only(bench, tmp_path):
    from mitoprobe.classifiers.protocol import load_protocol
    from mitoprobe.finetune.job import fold_images, vote_fractions

    proto = load_protocol(bench)
    hard = fold_images(bench, proto, 0, list(proto.tests))
    soft = fold_images(bench, proto, 0, list(proto.tests), targets="votes")
    assert hard.train_target is None and len(soft.train_target) == len(soft.train_ids)
    pt = bench.patches().set_index("patch_id").loc[soft.train_ids]
    want = pt[["expert1_atypical", "expert2_atypical", "expert3_atypical"]].astype(float).mean(axis=1).to_numpy()
    np.testing.assert_allclose(soft.train_target, want, rtol=1e-6)
    assert set(np.round(soft.train_target, 3)) >= {0.0, 1.0} and len(set(np.round(soft.train_target, 3))) > 2
    # a patch nobody voted on keeps its label
    ids = soft.train_ids[:2]
    st = _store_copy(bench, tmp_path, "novotes")
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in st.patch_parts.part_paths():  # rewritten in place: same rows, no votes
        t = pq.read_table(part)
        for c in ("expert1_atypical", "expert2_atypical", "expert3_atypical"):
            t = t.set_column(t.schema.get_field_index(c), c, pa.array([None] * len(t), pa.bool_()))
        pq.write_table(t, part)
    np.testing.assert_array_equal(vote_fractions(st, ids, np.array([1, 0])), [1.0, 0.0])
    cfg = FinetuneConfig.preset("offline", **FAST)
    assert cfg.options()["targets"] == "votes" and "targets" not in FinetuneConfig.paper("virchow2.hf").to_dict()
    rec = finetune(_store_copy(bench, tmp_path, "soft"), cfg, folds="0", progress=False, n_boot=10).records[0]
    assert rec["epochs"] == 2


def test_channels_last_and_decoded_eval_give_the_same_probabilities(bench):
    """How the preset scores on CPU (channels-last, held-out part decoded once) changes speed, not results."""
    from mitoprobe.embedder.factory import preprocess
    from mitoprobe.finetune.train import Runtime, decode_for_eval, predict_proba

    cfg = FinetuneConfig.preset("offline")
    torch.manual_seed(0)
    model, recipe = build_classifier(cfg)
    tf = preprocess(recipe, *cfg.mean_std())
    pngs = list(bench.images(bench.patches(columns=["patch_id"])["patch_id"][:12].tolist()).values())
    rt = Runtime(eval_batch_size=5)
    plain = predict_proba(model, pngs, tf, ("none", "rot90"), rt)
    decoded = predict_proba(model, pngs, tf, ("none", "rot90"), rt, decoded=decode_for_eval(pngs, tf))
    model.to(memory_format=torch.channels_last)
    fast = predict_proba(model, pngs, tf, ("none", "rot90"), rt, channels_last=True)
    assert plain.shape == (12,)
    np.testing.assert_allclose(decoded, plain, rtol=1e-6)
    np.testing.assert_allclose(fast, plain, atol=1e-5)


def test_subtype_head_learns_the_experts_subtype_calls_of_training_patches_only(bench, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mitoprobe import embedder
    from mitoprobe.classifiers.protocol import load_protocol
    from mitoprobe.finetune.config import SUBTYPES
    from mitoprobe.finetune.job import fold_images, subtype_targets
    from mitoprobe.finetune.train import subtype_loss

    proto = load_protocol(bench)
    data = fold_images(bench, proto, 0, list(proto.tests), targets="votes", aux_subtypes=True)
    votes = fold_images(bench, proto, 0, list(proto.tests), targets="votes").train_target
    assert data.train_target.shape == (len(data.train_ids), 1 + len(SUBTYPES))
    np.testing.assert_allclose(data.train_target[:, 0], votes)
    pt = bench.patches().set_index("patch_id").loc[data.train_ids]
    want = np.array([SUBTYPES.index(s) for s in pt["subtype_expert1"]])  # the example's experts agree
    np.testing.assert_array_equal(data.train_target[:, 1:].argmax(1), want)
    np.testing.assert_allclose(data.train_target[:, 1:].sum(1), 1.0)
    # experts who differ share the mass; a call outside SUBTYPES or no call counts as none
    st = _store_copy(bench, tmp_path, "subtypes")
    for part in st.patch_parts.part_paths():
        t = pq.read_table(part)
        e1 = ["AMF multipolar", None, "not a subtype"] + [None] * (len(t) - 3)
        t = t.set_column(t.schema.get_field_index("subtype_expert1"), "subtype_expert1", pa.array(e1, pa.string()))
        t = t.set_column(t.schema.get_field_index("subtype_expert2"), "subtype_expert2",
                         pa.array(["NMF metaphase", None, None] + [None] * (len(t) - 3), pa.string()))
        pq.write_table(t, part)
        ids = t.column("patch_id").to_numpy(zero_copy_only=False)[:3]
        break
    got = subtype_targets(st, ids)
    assert got[0, SUBTYPES.index("AMF multipolar")] == 0.5 and got[0, SUBTYPES.index("NMF metaphase")] == 0.5
    assert not got[1:].any()
    # rows without a call add nothing to the auxiliary loss
    logits = torch.randn(3, len(SUBTYPES), requires_grad=True)
    target = torch.zeros(3, len(SUBTYPES))
    target[0, 2] = 1.0
    subtype_loss(logits, target).backward()
    assert logits.grad[0].abs().sum() > 0 and not logits.grad[1:].any()
    # both augmentation paths train with the auxiliary head; the checkpoint holds it, the fold embedder ignores it
    for batch_augment in (True, False):
        cfg = FinetuneConfig.preset("offline", **FAST, aux_subtypes=0.5, batch_augment=batch_augment, mixup=0.2)
        assert cfg.options()["aux_subtypes"] == 0.5 and "aux_subtypes" in cfg.to_dict()
        target = _store_copy(bench, tmp_path, f"aux{batch_augment}")
        s = finetune(target, cfg, folds="0", progress=False, n_boot=10)
        assert s.records[0]["epochs"] == 2
    from safetensors.torch import load_file

    tensors = load_file(str(s.run_dir / "fold0" / "model.safetensors"))
    assert tensors["aux.weight"].shape[0] == len(SUBTYPES)
    summary = embedder.embed(target, f"ft:{s.run_key[:8]}/fold0")
    assert summary.rows_written > 0
    assert "aux_subtypes" not in FinetuneConfig.paper("virchow2.hf").to_dict()
    with pytest.raises(FinetuneError):
        FinetuneConfig.preset("offline", aux_subtypes=-1)
