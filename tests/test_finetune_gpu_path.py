"""The GPU-path fixes, checked on CPU with a tiny ViT and spies (issue 29's review):

* the held-out part is scored at the training precision (selection, schedule, early stop, threshold, stored
  probabilities), the test sets at the evaluation precision;
* the per-sample training loader is built once per fold, its workers persist across epochs, and its batches
  depend on the epoch seed only (not on the worker count, not on a resume); torch's global generator is left alone;
* a fine-tune writes each epoch's weights once (no EMA) and keeps at most {last, best} weights files; a kill
  between ``_finish``'s rename and DONE.json resumes;
* the embedding job copies a contiguous batch to the device and makes it channels-last there.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tiny_paper import tiny_vit
from conftest import png_bytes
from mitoprobe.embedder.recipes import get_recipe
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune import train as T
from mitoprobe.finetune.augment import train_transform
from mitoprobe.finetune.data import train_loader

TINY = "vit_gpu_path_test.random"

tiny_vit(TINY)  # registered at import: every test here builds it


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    rng = np.random.default_rng(0)
    return [png_bytes(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(20)]


def _data(pngs) -> T.FoldImages:
    """12 training patches, 4 held out, test sets of 3 and 1 (every split a different size)."""
    ids = np.array([f"p{i}" for i in range(len(pngs))])
    y = np.arange(len(pngs)) % 2
    return T.FoldImages(fold=0, train_ids=ids[:12], train_y=y[:12], val_ids=ids[12:16], val_y=y[12:16],
                        test_ids={"A": ids[16:19], "B": ids[19:]}, images=dict(zip(ids, pngs)))


def _cfg(method="lora", **kw) -> FinetuneConfig:
    return FinetuneConfig.paper(TINY, method, **{"max_epochs": 2, "max_steps": 2, "batch_size": 4, **kw})


# -- 1. held-out scoring at the training precision ----------------------------------------------------------------

def test_heldout_runs_at_training_precision_and_tests_at_evaluation_precision(pngs, tmp_path, monkeypatch):
    data = _data(pngs)
    val = [data.images[p] for p in data.val_ids]
    calls = []
    predict = T.predict_proba

    def spy(model, batch, transform, views, rt, precision="fp32", *a, **kw):
        calls.append(("val" if batch == val else "test", precision))
        return predict(model, batch, transform, views, rt, precision, *a, **kw)

    monkeypatch.setattr(T, "predict_proba", spy)
    # an evaluation precision that differs from training's (on CUDA: the H-optimus scripts' fp16); bf16 runs on CPU
    monkeypatch.setattr(T, "evaluation_precision", lambda *a: "bf16")
    rec = T.train_fold(_cfg(), data, tmp_path / "fold0", T.Runtime(progress=False))
    # two epochs of selection, the final held-out prediction, then the two test sets
    assert calls == [("val", "fp32")] * 3 + [("test", "bf16")] * 2
    assert (rec["precision"], rec["eval_precision"]) == ("fp32", "bf16")
    assert json.loads((tmp_path / "fold0" / T.DONE_FILE).read_text())["eval_precision"] == "bf16"


# -- 2. the training loader: built once, persistent workers, batches a function of the epoch seed -------------------

class _Pid:
    """A transform whose output names the process that ran it (and one random draw)."""

    def __call__(self, rgb):
        return torch.tensor([float(os.getpid()), float(torch.rand(()))])


def test_loader_workers_persist_across_epochs(pngs):
    loader = train_loader(pngs, np.arange(len(pngs)) % 2, _Pid(), 4, "shuffle", 0, 2, False)
    pids = []
    for seed in (1, 2):
        loader.sampler.reseed(seed)
        pids.append({int(row[0]) for batch, _ in loader for row in batch})
    assert pids[0] == pids[1] and len(pids[0]) == 2 and os.getpid() not in pids[0]


def _epochs(pngs, tf, num_workers: int, seeds, sampler="weighted"):
    loader = train_loader(pngs, np.r_[np.ones(4), np.zeros(len(pngs) - 4)], tf, 4, sampler, seeds[0], num_workers,
                          False, num_samples=10)
    out = []
    for seed in seeds:
        loader.sampler.reseed(seed)
        out.append(list(loader))
    return out


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))


@pytest.mark.parametrize("sampler", ["weighted", "shuffle"])
def test_loader_batches_depend_on_the_epoch_seed_only(pngs, sampler):
    cfg = _cfg(dihedral=True, hed=0.05, rotate_degrees=10)
    recipe = get_recipe(TINY)
    tf = train_transform(recipe, eval_preprocess=cfg.eval_preprocess(recipe), **cfg.augment_kwargs())
    before = torch.get_rng_state()
    main = _epochs(pngs, tf, 0, (11, 12), sampler)
    assert torch.equal(torch.get_rng_state(), before)  # dropout and mixup draws do not depend on the worker count
    workers = _epochs(pngs, tf, 2, (11, 12), sampler)
    resumed = _epochs(pngs, tf, 2, (12,), sampler)  # a loader built at the second epoch (a resumed fold)
    assert _same(main[0], workers[0]) and _same(main[1], workers[1]) and _same(main[1], resumed[0])
    assert not _same(main[0], main[1])  # a new epoch draws new samples and augmentations


def test_fold_builds_its_loader_once_and_trains_the_same_with_any_worker_count(pngs, tmp_path, monkeypatch):
    built = []
    make = T.train_loader
    monkeypatch.setattr(T, "train_loader", lambda *a, **kw: built.append(1) or make(*a, **kw))
    cfg = _cfg(mixup=0.2)  # LoRA dropout and mixup draw from the main process's generator
    recs = [T.train_fold(cfg, _data(pngs), tmp_path / f"w{w}", T.Runtime(progress=False, num_workers=w))
            for w in (0, 2)]
    assert len(built) == 2  # once per fold, not once per epoch
    assert [e["train_loss"] for e in recs[0]["history"]] == [e["train_loss"] for e in recs[1]["history"]]
    assert recs[0]["checkpoint_sha256"] == recs[1]["checkpoint_sha256"]


# -- 3. one weights write per epoch, at most {last, best} on disk ------------------------------------------------

def _scripted_scores(monkeypatch, scores):
    it = iter(scores)
    monkeypatch.setattr(T, "selection_score", lambda *a: next(it))


def _weights_files(fold_dir) -> list[str]:
    return sorted(f.name for f in fold_dir.glob("*-e*.safetensors"))


@pytest.mark.parametrize("ema, writes_when_improved", [(0.0, 1), (0.5, 2)])
def test_each_epoch_writes_its_weights_once_and_keeps_last_and_best_only(pngs, tmp_path, monkeypatch, ema,
                                                                         writes_when_improved):
    _scripted_scores(monkeypatch, [0.6, 0.5, 0.7, 0.7, 0.8])  # improved, not, improved, not (ties), improved
    writes = []
    save = T.save_weights
    monkeypatch.setattr(T, "save_weights", lambda m, method, path: writes.append(path.name) or save(m, method, path))
    fold_dir = tmp_path / "fold0"
    per_epoch = []

    def look(epoch):
        per_epoch.append((len(writes), _weights_files(fold_dir)))
        writes.clear()

    rec = T.train_fold(_cfg("full", max_epochs=5, max_steps=1, ema=ema), _data(pngs), fold_dir,
                       T.Runtime(progress=False, on_epoch=look))
    improved = [True, False, True, False, True]
    assert [n for n, _ in per_epoch] == [writes_when_improved if i else 1 for i in improved]
    if ema:
        assert [f for _, f in per_epoch] == [["best-e1.safetensors", "last-e1.safetensors"],
                                             ["best-e1.safetensors", "last-e2.safetensors"],
                                             ["best-e3.safetensors", "last-e3.safetensors"],
                                             ["best-e3.safetensors", "last-e4.safetensors"],
                                             ["best-e5.safetensors", "last-e5.safetensors"]]
    else:
        assert [f for _, f in per_epoch] == [["best-e1.safetensors"], ["best-e1.safetensors", "last-e2.safetensors"],
                                             ["best-e3.safetensors"], ["best-e3.safetensors", "last-e4.safetensors"],
                                             ["best-e5.safetensors"]]
    assert rec["best_epoch"] == 5 and _weights_files(fold_dir) == [] and (fold_dir / T.MODEL_FILE).is_file()
    assert not (fold_dir / T.STATE_FILE).exists()


def test_kill_between_the_final_rename_and_done_resumes(pngs, tmp_path, monkeypatch):
    """The last epoch improved: state.pt names the best file, which ``_finish`` renames model.safetensors."""
    _scripted_scores(monkeypatch, [0.5, 0.6])

    class Kill(Exception):
        pass

    def kill(path):
        raise Kill

    sha = T.file_sha256
    monkeypatch.setattr(T, "file_sha256", kill)  # called after the rename, before DONE.json
    fold_dir = tmp_path / "fold0"
    cfg = _cfg("full", max_steps=1)
    with pytest.raises(Kill):
        T.train_fold(cfg, _data(pngs), fold_dir, T.Runtime(progress=False))
    state = torch.load(fold_dir / T.STATE_FILE, weights_only=True)
    assert state["weights_file"] == state["best_file"] == "best-e2.safetensors"
    assert _weights_files(fold_dir) == [] and (fold_dir / T.MODEL_FILE).is_file()
    monkeypatch.setattr(T, "file_sha256", sha)
    rec = T.train_fold(cfg, _data(pngs), fold_dir, T.Runtime(progress=False))
    assert rec["best_epoch"] == 2 and rec["checkpoint_sha256"] == sha(fold_dir / T.MODEL_FILE)
    assert not (fold_dir / T.STATE_FILE).exists()


# -- 4. the embedding job: a contiguous host-to-device copy, channels-last on the device ----------------------------

def test_embedding_copies_contiguous_batches_and_feeds_channels_last(tiny_store, monkeypatch):
    from mitoprobe import embedder
    from mitoprobe.embedder import job

    monkeypatch.setattr(job, "prefers_channels_last", lambda recipe, device: True)
    copied, fed = [], []
    to = torch.Tensor.to

    def spy_to(self, *a, **kw):
        if kw.get("non_blocking"):
            copied.append(self.is_contiguous())
        return to(self, *a, **kw)

    build = job._build_local

    def spy_build(*a, **kw):
        net, transform = build(*a, **kw)
        net.backbone.register_forward_pre_hook(
            lambda m, args: fed.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        return net, transform

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    monkeypatch.setattr(job, "_build_local", spy_build)
    embedder.embed(tiny_store, "offline_cnn.random", views="none", num_workers=0, batch_size=8, progress=False)
    assert copied and all(copied)  # the copy from (pinned) host memory: a plain contiguous one
    assert fed and all(fed) and len(fed) == len(copied)  # every batch reaches the model channels-last


def test_every_view_reaches_the_model_channels_last():
    from mitoprobe.embedder.batches import forward_views
    from mitoprobe.embedder.dihedral import VIEWS_D8

    seen = []

    def model(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return {"vector": x.mean((2, 3))}

    out = forward_views(model, torch.randn(2, 3, 8, 8), VIEWS_D8, "cpu", None, channels_last=True)
    assert seen == [True] * 8 and out["vector"].shape == (16, 3)
