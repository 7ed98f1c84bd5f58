"""Training one fold: resumable epoch loop, early stopping, checkpoints, predictions.

Fold ``k`` trains on the other four folds and selects on fold ``k`` (early stopping, learning-rate
schedule, optional threshold); test sets are only predicted, once, with the selected checkpoint.

Files in ``<run>/fold<k>/``:

* after every epoch, the trained weights (adapters + head for LoRA), then ``state.pt``: optimizer,
  scheduler and early-stopping state (``torch.load(weights_only=True)``) and the name of the weights
  file it belongs to, so a kill between the two writes resumes from the previous epoch, never from a
  mismatched pair. The weights are ``best-e<N>.safetensors`` in an epoch that improved the held-out
  score (written once: without EMA the trained weights are the scored ones), else ``last-e<N>.safetensors``
  (with EMA, an improved epoch writes both: the trained and the averaged weights). After each epoch
  the folder holds at most these two weights files (1-4 GB each for a full fine-tune of a large model).
* the best file is renamed ``model.safetensors`` when the fold is done.
* ``predictions.parquet`` (held-out and test probabilities) and ``DONE.json`` (what was selected,
  checkpoint sha256, timings). ``DONE.json`` marks the fold complete; the resumable state is removed.

The held-out part that selects the checkpoint, steps the plateau schedule and stops early is scored at
the training precision (fp32 in the paper's scripts), as are its final probabilities (threshold, stored
held-out predictions); only the test sets run at the evaluation precision (the H-optimus scripts' fp16
is test inference only).

Every epoch reseeds from (seed, fold, epoch) inside ``torch.random.fork_rng``, so a resumed fold
draws exactly the samples and augmentations an uninterrupted one would (no global state is left
seeded); the torch RNG state is still stored in ``state.pt`` for the record. The per-sample training
loader is built once per fold (its workers persist) and reseeded per epoch (``finetune.data.EpochSampler``).

Memory: the fold's PNGs are read from the store's parts as the samples are asked for (``finetune.data``: each
DataLoader worker reads the row groups it needs and caches at most ``TRAIN_CACHE_BYTES``); decoded tensors
are kept only within ``DECODED_BUDGET`` (batch augmentation's pixels, the held-out part's inputs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mitoprobe.store.atomic import atomic_write, write_json
from mitoprobe.store.errors import FinetuneError
from mitoprobe.store.hashing import config_hash, file_sha256
from mitoprobe.store.progress import progress as progress_bar

from mitoprobe.classifiers import metrics as M
from mitoprobe.embedder.batches import is_cnn, prefers_channels_last
from mitoprobe.embedder.dihedral import apply_view_torch
from mitoprobe.embedder.transforms import decode_png

from .augment import batch_augment, train_transform
from .config import TTAS, FinetuneConfig
from .data import (TRAIN_CACHE_BYTES, StoredPatches, eval_loader, in_budget, iter_pngs, storage_order,
                   tensor_batches, train_loader, training_pixels)
from .model import build_classifier, load_weights, parameter_counts, save_weights
from .precision import autocast, cpu_capability, evaluation_precision, training_precision

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
DONE_FILE = "DONE.json"
MODEL_FILE = "model.safetensors"
PREDICTIONS_FILE = "predictions.parquet"


@dataclass
class FoldImages:
    """One fold's patches as pixels (PNG bytes + training labels): the image-side counterpart of
    ``classifiers.protocol.FoldData`` (which holds indices). Test labels are not here.

    ``images``: where the PNGs are: the store's parts (``finetune.data.StoredPatches``: read a row group at a
    time when a sample is asked for, what ``job.fold_images`` gives), or PNG bytes by id held in memory."""

    fold: int
    train_ids: np.ndarray
    train_y: np.ndarray
    val_ids: np.ndarray
    val_y: np.ndarray
    test_ids: dict[str, np.ndarray]
    images: StoredPatches | dict[str, bytes] = field(repr=False)
    train_target: np.ndarray | None = None  # soft training targets (expert vote fractions), else train_y

    def pngs(self, ids, cache_bytes: int = 0):
        """The PNGs of ``ids``, in order: a ``StoredPngs`` (caching at most ``cache_bytes`` a process) or a list."""
        if isinstance(self.images, StoredPatches):
            return self.images.pngs(ids, cache_bytes)
        return [self.images[p] for p in ids]


@dataclass
class Runtime:
    """How to run (not what): never enters a hash."""

    device: str = "cpu"
    num_workers: int = 0
    eval_batch_size: int = 64
    progress: bool = True
    weights: str | None = None
    overrides: dict | None = None
    hf_token_env: str = "HF_TOKEN"
    on_epoch: Callable[[int], None] | None = None  # called after each saved epoch (tests simulate kills)


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return int(config_hash({"seed": seed, "fold": fold, "epoch": epoch}), 16) % (2**31 - 1)


LOG_EVERY = 25  # steps between progress-bar loss readouts (each is a host sync on CUDA)


def lr_schedule(cfg: FinetuneConfig, opt, steps_per_epoch: int):
    """ReduceLROnPlateau on the held-out score (paper; stepped per epoch) or per-step cosine decay
    to ``min_lr`` at ``max_epochs`` after one linear warm-up epoch (stepped per optimizer step)."""
    import math

    import torch

    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.lr_factor,
                                                          patience=cfg.lr_patience, min_lr=cfg.min_lr)
    warm, total, floor = steps_per_epoch, max(cfg.max_epochs * steps_per_epoch, steps_per_epoch + 1), cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / (total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_optimizer(cfg: FinetuneConfig, params):
    import torch

    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_ema(cfg: FinetuneConfig, model):
    """An exponential moving average of every weight and buffer (None when ``cfg.ema`` is 0)."""
    if not cfg.ema:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)


def mix(x, y, alpha: float):
    """Mixup of a batch with a permutation of itself (labels become soft); torch's global RNG."""
    import torch

    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    perm = torch.randperm(len(y))
    return lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]


def subtype_loss(aux_logits, target):
    """Soft cross-entropy of the auxiliary head against the experts' subtype distribution, over the rows
    where at least one expert called a subtype (all-zero rows carry no subtype and add nothing)."""
    import torch

    has = target.sum(1) > 0
    if not bool(has.any()):
        return aux_logits.sum() * 0.0
    return -(target[has] * torch.log_softmax(aux_logits[has].float(), dim=1)).sum(1).mean()


def selection_score(cfg: FinetuneConfig, y_val: np.ndarray, p_val: np.ndarray) -> float:
    """The held-out score that selects the checkpoint: the paper's balanced accuracy at 0.5, or AUROC
    (threshold-free, steadier under class imbalance). Held-out labels only; test sets never enter."""

    return M.auroc(y_val, p_val) if cfg.select_on == "auroc" else _ba(y_val, p_val)


def loss_fn(cfg: FinetuneConfig, y_train: np.ndarray):
    """BCE (paper), class-weighted BCE (positives weighted n_neg / n_pos) or focal loss on logits."""
    import torch
    import torch.nn.functional as F

    n_pos = max(int(y_train.sum()), 1)
    pos_weight = torch.tensor((len(y_train) - n_pos) / n_pos)

    def fn(logits, y):
        if cfg.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, y)
        if cfg.loss == "weighted_bce":
            return F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight.to(logits.device))
        ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        p_t = torch.exp(-ce)
        alpha = torch.where(y > 0.5, 1 - 1 / (1 + pos_weight), 1 / (1 + pos_weight)).to(logits.device)
        return (alpha * (1 - p_t) ** cfg.focal_gamma * ce).mean()

    return fn


def decode_for_eval(pngs, transform):
    """The patches through the evaluation transform as one (N, 3, S, S) tensor: decoded once (in storage order,
    into a tensor allocated once), so the held-out part can be scored after every epoch without decoding it
    again. None when there are none, or when N x 3 x S x S floats exceed ``finetune.data.DECODED_BUDGET`` (then
    it is read and decoded again each time it is scored)."""
    import torch

    out = None
    for i, png in iter_pngs(pngs):
        x = transform(decode_png(png))
        if out is None:
            if not in_budget(len(pngs), x.nbytes):
                return None
            out = np.empty((len(pngs), *x.shape), x.dtype)
        out[i] = x
    return None if out is None else torch.from_numpy(out)


def predict_proba(model, pngs, transform, views: tuple[str, ...], rt: Runtime,
                  precision: str = "fp32", decoded=None, channels_last: bool = False) -> np.ndarray:
    """P(atypical) per patch of ``pngs`` (a list or ``StoredPngs``, read in storage order and put back in
    order); with several views, the mean over views (rotation TTA).

    ``precision``: the resolved autocast dtype (``finetune.precision``): the training one for the held-out
    part, the evaluation one for the test sets.
    ``decoded``: ``decode_for_eval(pngs, transform)`` when the caller keeps it (else decoded here, per batch);
    ``channels_last``: the model is in that memory format, so the batches are put in it too."""
    import torch

    model.eval()
    out = []
    order = None
    if decoded is not None:
        batches = decoded.split(rt.eval_batch_size)
    else:
        loader = eval_loader(pngs, transform, rt.eval_batch_size, rt.num_workers, rt.device.startswith("cuda"))
        batches, order = (x for x, _ in loader), storage_order(pngs)
    with torch.inference_mode(), autocast(rt.device, precision):
        for x in batches:
            x = x.to(rt.device, non_blocking=True)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            p = torch.stack([torch.sigmoid(model(apply_view_torch(x, v).contiguous(memory_format=fmt)).float())
                             for v in views]).mean(0)
            out.append(p.cpu().numpy())
    p = np.concatenate(out) if out else np.zeros(0)
    if order is None:
        return p
    back = np.empty_like(p)
    back[order] = p
    return back


def _ba(y, p, threshold=0.5) -> float:

    return M.balanced_accuracy(y, M.predict(p, threshold))


def _remove_weights(fold_dir: Path, keep: set) -> None:
    """Delete the epoch weights files not named in ``keep`` (what a finished epoch, or fold, no longer needs)."""
    for f in [*fold_dir.glob("last-e*.safetensors"), *fold_dir.glob("best-e*.safetensors")]:
        if f.name not in keep:
            f.unlink()


def _save_epoch(model, scored, cfg, fold_dir: Path, st: dict, improved: bool, resume: dict) -> None:
    """The epoch's weights, then ``state.pt`` naming them, then the files it no longer names are deleted.

    ``st["weights_file"]`` is the resume point: the best file itself when the epoch improved and the trained
    weights are the scored ones (no EMA), so such an epoch writes its weights once."""
    import torch

    if improved and scored is model:
        st["weights_file"] = st["best_file"]
    else:
        st["weights_file"] = f"last-e{st['epoch']}.safetensors"
        if improved:
            save_weights(scored, cfg.method, fold_dir / st["best_file"])
    save_weights(model, cfg.method, fold_dir / st["weights_file"])
    state = dict(st, **resume, rng=torch.get_rng_state())
    atomic_write(fold_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))
    _remove_weights(fold_dir, {st["weights_file"], st["best_file"]})


def _weights_path(fold_dir: Path, name: str, best_file: str | None) -> Path:
    """A weights file that ``state.pt`` names; the best one may already be ``model.safetensors``
    (``_finish`` renames it before its predictions and DONE.json: a kill in between finds it there)."""
    path = fold_dir / name
    if not path.is_file() and name == best_file and (fold_dir / MODEL_FILE).is_file():
        return fold_dir / MODEL_FILE
    return path


def _load_state(fold_dir: Path) -> dict | None:
    import torch

    p = fold_dir / STATE_FILE
    if not p.is_file():
        return None
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not _weights_path(fold_dir, state["weights_file"], state["best_file"]).is_file():
        raise FinetuneError(f"{p} names {state['weights_file']}, which is missing; delete {fold_dir} to restart the fold")
    return state


def train_fold(cfg: FinetuneConfig, data: FoldImages, fold_dir: Path, rt: Runtime) -> dict:
    """Train (or resume, or just read) fold ``data.fold``; returns its DONE record."""
    import torch

    fold_dir.mkdir(parents=True, exist_ok=True)
    done = fold_dir / DONE_FILE
    if done.is_file():
        return json.loads(done.read_text())
    k = data.fold
    model, recipe = build_classifier(cfg, rt.weights, rt.overrides, hf_token_env=rt.hf_token_env)
    model.to(rt.device)
    augment = cfg.augment_kwargs()
    tf_eval = cfg.eval_preprocess(recipe)  # the script's evaluation geometry and normalisation
    if cfg.batch_augment:
        tf_train = batch_augment(recipe, eval_preprocess=tf_eval, **augment)
    else:
        tf_train = train_transform(recipe, eval_preprocess=tf_eval, crop_from=cfg.crop_from, **augment)
    precision = training_precision(rt.device, cfg.cpu_bf16, cfg.precision)  # bf16 on CPU only where it is native
    eval_precision = evaluation_precision(rt.device, precision, cfg.eval_precision)
    on_gpu = rt.device.startswith("cuda")
    # channels-last: as the embedder (CNNs on CUDA, ResNets on CPU: +11-19% training for the offline preset's CNN
    # on a 2-core AVX2 CPU), and any CNN under bf16 on CPU
    channels_last = prefers_channels_last(recipe, rt.device) or (is_cnn(recipe) and precision == "bf16")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels once
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    steps_per_epoch = -(-len(data.train_ids) // cfg.batch_size)
    if cfg.max_steps:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps)
    sched = lr_schedule(cfg, opt, steps_per_epoch)
    ema = make_ema(cfg, model)
    scored = model if ema is None else ema.module  # the weights that are evaluated, selected and saved
    st = dict(epoch=0, best_score=0.0, best_epoch=-1, best_file=None, weights_file=None, bad_epochs=0,
              stopped=False, history=[], train_seconds=0.0, train_images=0)
    saved = _load_state(fold_dir)
    if saved is not None:
        load_weights(model, cfg.method, _weights_path(fold_dir, saved["weights_file"], saved["best_file"]))
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        st.update({k_: saved[k_] for k_ in st})
        log.info("fold %d: resuming after epoch %d (best %.4f at epoch %d)", k, st["epoch"], st["best_score"],
                 st["best_epoch"])
    counts = parameter_counts(model)
    train_pngs = data.pngs(data.train_ids, TRAIN_CACHE_BYTES)
    pixels = samples = None
    if cfg.batch_augment:  # decoded once (within DECODED_BUDGET); each epoch only gathers and augments batches
        pixels = training_pixels(train_pngs, tf_eval.geometry if cfg.crop_from == "view" else None)
        pixels = pixels.to(rt.device) if isinstance(pixels, torch.Tensor) else pixels
    else:  # built once: its workers persist across epochs; reseeded per epoch
        samples = train_loader(train_pngs, data.train_y, tf_train, cfg.batch_size, cfg.sampler, 0, rt.num_workers,
                               on_gpu, targets=data.train_target)
    val_pngs = data.pngs(data.val_ids)
    val_decoded = decode_for_eval(val_pngs, tf_eval) if cfg.batch_augment else None
    crit = loss_fn(cfg, data.train_y)
    devices = [torch.cuda.current_device()] if rt.device.startswith("cuda") else []
    while st["epoch"] < cfg.max_epochs and not st["stopped"]:
        epoch = st["epoch"]
        with torch.random.fork_rng(devices=devices):
            seed = epoch_seed(cfg.seed, k, epoch)
            torch.manual_seed(seed)
            if cfg.batch_augment:
                loader = tensor_batches(pixels, data.train_y, tf_train, cfg.batch_size, cfg.sampler, seed,
                                        targets=data.train_target, device=rt.device, num_workers=rt.num_workers,
                                        pin_memory=on_gpu)
            else:
                samples.sampler.reseed(seed)
                loader = samples
            model.train()
            t0, seen = time.perf_counter(), 0
            loss_sum = torch.zeros((), device=rt.device)  # summed on the device: no host sync per step
            with progress_bar(total=steps_per_epoch * cfg.batch_size, desc=f"fold {k} epoch {epoch + 1}",
                              unit="img", enabled=rt.progress) as bar:
                for step, (x, y) in enumerate(loader):
                    if step >= steps_per_epoch:
                        break
                    x, y = x.to(rt.device, non_blocking=True), y.to(rt.device, non_blocking=True)
                    if cfg.mixup:
                        x, y = mix(x, y, cfg.mixup)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(rt.device, precision):  # with aux_subtypes, y = (main target, subtype distribution)
                        logits, aux_logits = model.forward_aux(x) if cfg.aux_subtypes else (model(x), None)
                    loss = crit(logits.float(), y if aux_logits is None else y[:, 0])
                    if aux_logits is not None:
                        loss = loss + cfg.aux_subtypes * subtype_loss(aux_logits, y[:, 1:])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if cfg.schedule == "cosine":
                        sched.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    seen += len(y)
                    loss_sum += loss.detach() * len(y)
                    bar.update(len(y))
                    if rt.progress and step % LOG_EVERY == 0:
                        bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
            if on_gpu:
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            loss_sum = float(loss_sum)
        # at the training precision: the selection sees the weights as they were trained (fp32 in the scripts)
        p_val = predict_proba(scored, val_pngs, tf_eval, ("none",), rt, precision, val_decoded, channels_last)
        score = selection_score(cfg, data.val_y, p_val)
        improved = score > st["best_score"]  # the paper's rule: strictly better held-out score
        if improved:
            st.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_file=f"best-e{epoch + 1}.safetensors")
        else:
            st["bad_epochs"] += 1
            st["stopped"] = st["bad_epochs"] >= cfg.early_stop
        if not st["stopped"] and cfg.schedule == "plateau":
            sched.step(score)
        st["history"].append(dict(epoch=epoch + 1, train_loss=loss_sum / max(seen, 1), val_score=score,
                                  val_balanced_accuracy=_ba(data.val_y, p_val),
                                  lr=float(opt.param_groups[0]["lr"]), images_per_s=seen / secs if secs else 0.0))
        st.update(epoch=epoch + 1, train_seconds=st["train_seconds"] + secs, train_images=st["train_images"] + seen)
        extra = {} if ema is None else dict(ema=ema.state_dict())
        _save_epoch(model, scored, cfg, fold_dir, st, improved,
                    dict(optimizer=opt.state_dict(), scheduler=sched.state_dict(), **extra))
        log.info("fold %d epoch %d: loss %.4f, held-out %s %.4f%s", k, epoch + 1, loss_sum / max(seen, 1),
                 cfg.select_on, score, " (best)" if improved else "")
        if rt.on_epoch is not None:
            rt.on_epoch(epoch + 1)
    loader = samples = None  # the training loader's workers end here, before the evaluation loaders start theirs
    return _finish(cfg, data, fold_dir, scored, tf_eval, st, counts, rt, (precision, eval_precision), channels_last,
                   val_decoded)


def _finish(cfg, data: FoldImages, fold_dir: Path, model, tf_eval, st: dict, counts: dict, rt: Runtime,
            precisions: tuple[str, str], channels_last: bool = False, val_decoded=None) -> dict:
    """Select the best checkpoint, predict held-out + tests, write DONE (the fold's commit point).

    The held-out part is predicted at the training precision, as it was scored while selecting (its
    threshold and stored probabilities agree with the selection); the test sets at the evaluation precision."""

    # never improved on 0 (NaN scores): keep the last epoch
    best = _weights_path(fold_dir, st["best_file"] or st["weights_file"], st["best_file"])
    load_weights(model, cfg.method, best)
    best.replace(fold_dir / MODEL_FILE)
    views = TTAS[cfg.tta]
    t0 = time.perf_counter()
    precision, eval_precision = precisions
    p_val = predict_proba(model, data.pngs(data.val_ids), tf_eval, views, rt, precision,
                          decoded=val_decoded, channels_last=channels_last)
    threshold = M.best_threshold(data.val_y, p_val) if cfg.threshold == "val_youden" else 0.5
    frames = [pd.DataFrame(dict(split="val", patch_id=data.val_ids, probability=p_val))]
    for name, ids in data.test_ids.items():
        p = predict_proba(model, data.pngs(ids), tf_eval, views, rt, eval_precision,
                          channels_last=channels_last)
        frames.append(pd.DataFrame(dict(split=name, patch_id=ids, probability=p)))
    predict_seconds = time.perf_counter() - t0
    preds = pd.concat(frames, ignore_index=True)
    atomic_write(fold_dir / PREDICTIONS_FILE, lambda tmp: preds.to_parquet(tmp, index=False))
    record = dict(fold=data.fold, best_epoch=st["best_epoch"] + 1, epochs=st["epoch"],
                  early_stopped=bool(st["stopped"]), threshold=float(threshold),
                  val_balanced_accuracy=M.balanced_accuracy(data.val_y, M.predict(p_val, threshold)),
                  val_auroc=M.auroc(data.val_y, p_val), n_train=int(len(data.train_ids)),
                  checkpoint=MODEL_FILE, checkpoint_sha256=file_sha256(fold_dir / MODEL_FILE),
                  parameters=counts, fit_seconds=st["train_seconds"], predict_seconds=predict_seconds,
                  images_per_s=st["train_images"] / st["train_seconds"] if st["train_seconds"] else 0.0,
                  device=rt.device, precision=precision, eval_precision=eval_precision, cpu_capability=cpu_capability(),
                  history=st["history"])
    write_json(record, fold_dir / DONE_FILE)
    _remove_weights(fold_dir, set())
    (fold_dir / STATE_FILE).unlink(missing_ok=True)
    return record


def read_predictions(fold_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(fold_dir / PREDICTIONS_FILE)
