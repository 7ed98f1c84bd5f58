"""Embedding throughput: the paper's way (one image per forward pass) against ``embedder.embed``.

Same model, same images. CPU mode (default): the random-weight ViT-S/16 recipe ``vit_small.random``
over N real patches from the store (or synthetic ones if none), fp32. ``--gpu``: the Virchow2
architecture (ViT-H/14, 4 registers, SwiGLU) with random weights in bf16, sized to finish in
< 8 minutes on one H100/H200; prints patches/s for both ways, the end-to-end job's patches/s,
the steady-state model throughput and its model-FLOP utilisation (FLOPs counted by
``torch.utils.flop_counter`` on one forward pass, peak = the card's dense bf16 figure).

Example: python -m benchmarks.embed_throughput --n 256
         python -m benchmarks.embed_throughput --gpu
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from mitoprobe import embedder
from mitoprobe.store import Store, schema

from .gpu_check import synthetic_pngs
from .machine import header

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}


def _subset_store(src: Path | None, n: int, root: Path):
    """A store holding ``n`` patches: the first n of ``src``, else synthetic 128 px PNGs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    st = Store(root)
    root.mkdir(parents=True, exist_ok=True)
    if src is not None and Store(src).has_patches():
        meta = Store(src).patch_table().slice(0, n)
        pngs = Store(src).images(meta["patch_id"].to_pylist())
        t = meta.append_column("png", pa.array([pngs[p] for p in meta["patch_id"].to_pylist()], pa.binary()))
        t = t.select(schema.PATCHES.names).cast(schema.PATCHES)
    else:
        cols = {f.name: pa.nulls(n, f.type) for f in schema.PATCHES}  # a whole patches table, metadata null
        cols.update(patch_id=pa.array([f"{i:016x}" for i in range(n)], schema.PATCHES.field("patch_id").type),
                    png=pa.array(synthetic_pngs(n), pa.binary()))
        t = pa.table(cols, schema=schema.PATCHES)
    pq.write_table(t, st.patch_parts.legacy_path)  # a one-file (format-1) patches table: still read as is
    return st


def paper_way(recipe_name: str, pngs: list[bytes], device: str, dtype) -> float:
    """One image at a time, as the paper's scripts do: PIL decode, timm transform, model(x[None])."""
    import timm
    import torch
    from PIL import Image

    model, _ = embedder.build(recipe_name)
    model.to(device)
    r = embedder.get_recipe(recipe_name)
    tf = timm.data.create_transform(input_size=(3, r.input_size, r.input_size), interpolation=r.interpolation,
                                    mean=r.mean, std=r.std, crop_pct=r.input_size / r.resize)
    def one(b):
        x = tf(Image.open(io.BytesIO(b)).convert("RGB")).unsqueeze(0).to(device)
        with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            return {k: v.float().cpu() for k, v in model(x).items()}
    for b in pngs[:3]:
        one(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for b in pngs:
        one(b)
    return len(pngs) / (time.perf_counter() - t)


def job_way(st, recipe_name: str, device: str, batch_size: int | None) -> tuple[float, float]:
    """(patches/s of the loop, wall seconds incl. model build) for ``embedder.embed``."""
    t = time.perf_counter()
    s = embedder.embed(st, recipe_name, device=device, batch_size=batch_size, progress=False)
    return s.patches_per_s, time.perf_counter() - t


def model_throughput(recipe_name: str, device: str, batch_size: int, steps: int, compile_: bool):
    """Steady-state forward passes on device-resident input: (patches/s, FLOPs per patch)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    r = embedder.get_recipe(recipe_name)
    model, _ = embedder.build(r)
    model.to(device)
    x = torch.randn(batch_size, 3, r.input_size, r.input_size, device=device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        with FlopCounterMode(display=False) as fc:
            model(x[:1])
        flops = fc.get_total_flops()
        fwd = torch.compile(model.backbone.forward_features) if compile_ else model.backbone.forward_features
        for _ in range(3):
            fwd(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            fwd(x)
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - t), flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="Virchow2-architecture ViT-H/14 in bf16 on CUDA")
    ap.add_argument("--n", type=int, default=None, help="patches (CPU default 256, GPU 16384)")
    ap.add_argument("--n-paper", type=int, default=None, help="patches for the one-at-a-time way")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--store", type=Path, default=Path(os.environ.get("MITOPROBE_STORE", "mitoprobe-store")))
    ap.add_argument("--compile", action="store_true", help="torch.compile the model in the steady-state measure")
    ap.add_argument("--peak-tflops", type=float, default=None, help="card's dense bf16 peak (auto for H100/H200)")
    a = ap.parse_args()

    import torch

    if a.gpu:
        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA device")
        recipe, device, dtype = "virchow2.random", "cuda", torch.bfloat16
        n, n_paper, bs = a.n or 16384, a.n_paper or 512, a.batch_size or 256
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        recipe, device, dtype = "vit_small.random", "cpu", None
        n, n_paper, bs = a.n or 256, a.n_paper or (a.n or 256), a.batch_size
    print(header(), flush=True)
    print(f"model {recipe}; device {device}; {n} patches (job), {n_paper} (one at a time)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        st = _subset_store(a.store, n, Path(tmp) / "store")
        pngs = list(st.images(st.patches(columns=["patch_id"])["patch_id"][:n_paper].tolist()).values())
        paper = paper_way(recipe, pngs, device, dtype)
        print(f"paper's way (batch 1):      {paper:9.1f} patches/s", flush=True)
        job, wall = job_way(st, recipe, device, bs)
        print(f"embedder.embed (batched):   {job:9.1f} patches/s  ({n} patches, {wall:.1f} s wall incl. build)")
        print(f"speed-up:                   {job / paper:9.2f}x")
    if a.gpu:
        ips, flops = model_throughput(recipe, device, bs, steps=max(10, 4096 // bs), compile_=a.compile)
        name = torch.cuda.get_device_name()
        peak = a.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        print(f"model only (bf16, batch {bs}{', compiled' if a.compile else ''}): {ips:9.1f} patches/s, "
              f"{flops / 1e9:.1f} GFLOP/patch, {ips * flops / 1e12:.0f} TFLOP/s")
        if peak:
            print(f"MFU model only: {100 * ips * flops / (peak * 1e12):.1f}%   "
                  f"MFU end to end: {100 * job * flops / (peak * 1e12):.1f}%  (peak {peak:.0f} TFLOP/s bf16)")
        else:
            print("pass --peak-tflops for MFU (unknown card)")


if __name__ == "__main__":
    main()
