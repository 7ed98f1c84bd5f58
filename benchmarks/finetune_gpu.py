"""GPU check of the fine-tuning step: throughput and peak memory (sized for <= 8 min on one H100/H200).

1. LoRA (the paper's settings: r=8, alpha=16, qkv/proj/fc1/fc2, batch 8, Adam 5e-5, bf16 autocast)
   on a random-weight ViT-H/14 in the Virchow2 configuration (``virchow2.random``), over real patches
   from the store with the paper's training augmentation, for ``--steps`` optimizer steps.
2. One short full fine-tune of a small CNN (``resnet18.random``) for the same number of steps.

Both go through the job's own pieces (``build_classifier``, ``train_transform``, ``train_loader``,
``loss_fn``). Prints images/s (after ``--warmup`` steps) and peak GPU memory, and writes JSON.
``--tiny`` swaps in a 32 px two-block ViT and runs on CPU: a dry run of this script, no figures.

Example: python benchmarks/finetune_gpu.py --store mitoprobe-store --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from classifiers.protocol import load_protocol
from finetune import FinetuneConfig
from finetune.augment import train_transform
from finetune.data import train_loader
from finetune.model import build_classifier, parameter_counts
from finetune.train import _amp, loss_fn
from store import Store

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def bench(st, model_name: str, method: str, steps: int, warmup: int, device: str, batch_size: int,
          overrides: dict | None, input_size: int | None, workers: int) -> dict:
    import numpy as np
    import torch


    cfg = FinetuneConfig.paper(model_name, method, batch_size=batch_size)
    proto = load_protocol(st)
    fd = proto.fold_data(0)
    ids = proto.train["patch_id"].to_numpy()[fd.train_idx]
    y = fd.y[fd.train_idx]
    images = st.images(list(ids))
    pngs = [images[p] for p in ids]
    model, recipe = build_classifier(cfg, overrides=overrides)
    if input_size:  # the tiny dry run: a recipe-shaped preprocess at the tiny model's size
        from dataclasses import replace

        recipe = replace(recipe, input_size=input_size, resize=input_size)
    model.to(device)
    mean, std = cfg.mean_std()
    tf = train_transform(recipe, mean, std, **cfg.augment_kwargs())
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    crit = loss_fn(cfg, y)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model.train()
    done, t0, n_img, losses = 0, None, 0, []
    while done < steps + warmup:
        for x, yb in train_loader(pngs, y, tf, cfg.batch_size, cfg.sampler, done, workers, device.startswith("cuda")):
            if done == warmup:
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0, n_img = time.perf_counter(), 0
            x, yb = x.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            with _amp(device):
                logits = model(x)
            loss = crit(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            n_img += len(yb)
            done += 1
            if done >= steps + warmup:
                break
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    counts = parameter_counts(model)
    out = dict(model=model_name, method=method, device=device, steps=steps, batch_size=cfg.batch_size,
               images_per_s=n_img / secs, seconds=secs, params_total=counts["total"],
               params_trainable=counts["trainable"], loss_first=losses[0], loss_last=float(np.mean(losses[-10:])),
               peak_gpu_mem_gib=(torch.cuda.max_memory_allocated() / 2**30) if device.startswith("cuda") else None,
               gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None)
    del model, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="store with the imported patches (default: $MITOPROBE_STORE)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8, help="the paper's 8")
    ap.add_argument("--cnn-batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="CPU dry run with a tiny ViT (checks the script, no figures)")
    ap.add_argument("--out", default="finetune_gpu.json")
    a = ap.parse_args(argv)

    import torch

    st = Store(a.store)
    if a.tiny:
        torch.set_num_threads(2)
        device, vit_over, size, cnn = "cpu", TINY_VIT, 32, "resnet18.random"
    else:
        if not torch.cuda.is_available():
            print("no CUDA device; use --tiny for a CPU dry run", file=sys.stderr)
            return 2
        device, vit_over, size, cnn = "cuda", None, None, "resnet18.random"
    results = [bench(st, "virchow2.random", "lora", a.steps, a.warmup, device, a.batch_size, vit_over, size, a.workers)]
    print(json.dumps(results[-1]), flush=True)
    results.append(bench(st, cnn, "full", a.steps, a.warmup, device, a.cnn_batch_size, None, None, a.workers))
    print(json.dumps(results[-1]), flush=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    for r in results:
        mem = f", peak {r['peak_gpu_mem_gib']:.1f} GiB" if r["peak_gpu_mem_gib"] is not None else ""
        print(f"{r['model']:>18} {r['method']:>4}: {r['images_per_s']:8.1f} img/s (batch {r['batch_size']}, "
              f"{r['params_trainable'] / 1e6:.2f}M of {r['params_total'] / 1e6:.1f}M trainable){mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
