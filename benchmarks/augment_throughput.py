"""Training input pipelines of the offline preset, side by side: per-sample transforms vs batched augmentation.

Why: on a 2-core CPU the per-sample pipeline (PNG decode + torchvision ops + HED jitter for every image,
every epoch, in a DataLoader worker) costs more than the small CNN's training step, and its worker takes
the core the trainer needs. ``batch_augment`` decodes the patches once and augments whole batches in the
trainer's process (``finetune.augment.BatchAugment``). This prints, on real patches from a store:

1. augmentation alone, img/s, both ways, on one thread;
2. training (forward, BCE, backward, AdamW) fed by each pipeline as ``finetune`` feeds it: the per-sample
   DataLoader with ``--workers`` workers, the batched one in-process; img/s and their ratio;

with the CPU's capability, cores and load average beside the figures.

Usage: python -m benchmarks.augment_throughput --store STORE [--steps 12] [--threads 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mitoprobe.embedder.factory import preprocess
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.augment import batch_augment, train_transform
from mitoprobe.finetune.data import stack_pixels, tensor_batches, train_loader
from mitoprobe.finetune.model import build_classifier
from mitoprobe.store import Store

from .machine import header


def _train(model, batches, steps: int) -> float:
    """img/s over ``steps`` steps after one warm-up step, the batches' production included."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    seen, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 1:
            t0, seen = time.perf_counter(), 0
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if i == steps:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a store holding the benchmark patches")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the per-sample pipeline")
    a = ap.parse_args()
    cfg = FinetuneConfig.preset("offline")
    mean, std = cfg.mean_std()
    _, recipe = build_classifier(cfg)
    n = (a.steps + 1) * cfg.batch_size
    st = Store(a.store)
    pngs = list(st.images(st.patches(columns=["patch_id"])["patch_id"][:n].tolist()).values())
    y = (np.arange(len(pngs)) % 4 == 0).astype(np.float32)
    per_sample = train_transform(recipe, mean, std, crop_from=cfg.crop_from, **cfg.augment_kwargs())
    batched = batch_augment(recipe, mean, std, **cfg.augment_kwargs())
    geometry = preprocess(recipe, mean, std).geometry

    torch.set_num_threads(1)
    from mitoprobe.embedder.transforms import decode_png

    t0 = time.perf_counter()
    for b in pngs:
        per_sample(decode_png(b))
    sample_rate = len(pngs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    pixels = stack_pixels(pngs, geometry)
    decode_once = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(0, len(pngs), cfg.batch_size):
        batched(pixels[i:i + cfg.batch_size], g)
    batch_rate = len(pngs) / (time.perf_counter() - t0)

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, _ = build_classifier(cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loader = train_loader(pngs, y, per_sample, cfg.batch_size, "shuffle", 0, a.workers, False)
    train_sample = _train(model, loader, a.steps)
    model.load_state_dict(state)
    train_batch = _train(model, tensor_batches(pixels, y, batched, cfg.batch_size, "shuffle", 0), a.steps)

    print(header())
    print(f"{recipe.name} at {recipe.input_size} px, batch {cfg.batch_size}, {len(pngs)} patches")
    print(f"augmentation alone, 1 thread: per sample (decode + transform) {sample_rate:7.1f} img/s; batched "
          f"{batch_rate:7.1f} img/s (after decoding once: {decode_once * 1e3 / len(pngs):.2f} ms/img)")
    print(f"training, {a.threads} torch thread(s): per-sample DataLoader ({a.workers} worker(s)) {train_sample:7.1f} "
          f"img/s; batched in-process {train_batch:7.1f} img/s; batched/per-sample = {train_batch / train_sample:.2f}x")


if __name__ == "__main__":
    main()
