"""One batch of patches -> stored rows: shared by the local engine (``job``) and the Ray engine.

Torch is imported inside the functions: ``import mitoprobe.embedder`` stays torch-free.
"""

from __future__ import annotations

import numpy as np

from .dihedral import apply_view_np, apply_view_torch
from .recipes import Recipe
from .transforms import decode_png

CHUNK_ROWS = 1024  # rows committed per Parquet part (what a kill can lose at most)


def autocast_dtype(recipe: Recipe, device: str):
    """bf16/fp16 autocast on GPU per the recipe; fp32 on CPU (vectors are stored fp32 either way)."""
    import torch

    if not device.startswith("cuda") or recipe.precision == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[recipe.precision]


def is_cnn(recipe: Recipe) -> bool:
    """A convolutional network (not a ViT, not Swin, not handcrafted): where channels-last pays."""
    return recipe.arch != "handcrafted" and not recipe.is_vit and not recipe.arch.startswith("swin")


def prefers_channels_last(recipe: Recipe, device: str) -> bool:
    """Channels-last memory format: every CNN on CUDA (cuDNN's NHWC kernels); ResNets on CPU too (+13-55%
    inference for the offline CNN on a 2-core AVX2 CPU, docs/offline-accuracy.md)."""
    return is_cnn(recipe) and (device.startswith("cuda") or recipe.arch.startswith("resnet"))


class Prepare:
    """Worker-side: PNG bytes -> model input (neural) or per-view feature rows (handcrafted)."""

    def __init__(self, transform, views: tuple[str, ...], pixel_views: bool):
        self.transform, self.views, self.pixel_views = transform, views, pixel_views

    def __call__(self, png: bytes) -> np.ndarray:
        rgb = decode_png(png)
        if self.pixel_views:  # (V, d): views applied to the pixels, then the features
            return np.stack([self.transform(apply_view_np(rgb, v)) for v in self.views])
        return self.transform(rgb)


def forward_views(model, x, views: tuple[str, ...], device: str, dtype,
                  channels_last: bool = False) -> dict[str, np.ndarray]:
    """(B, 3, S, S) batch -> {output: (V*B, d) float32}, rows view-major (all patches for view 0, ...).

    ``channels_last``: the model is in that memory format; each view is put in it on the device, after the
    copy, so the host-to-device copy stays a plain contiguous one from pinned memory."""
    import torch

    outs: dict[str, list] = {}
    x = x.to(device, non_blocking=True)
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
        for v in views:
            xv = apply_view_torch(x, v)
            for k, t in model(xv.contiguous(memory_format=torch.channels_last) if channels_last else xv).items():
                outs.setdefault(k, []).append(t.float())
    return {k: torch.cat(ts).cpu().numpy() for k, ts in outs.items()}


def batch_rows(model, prepared, patch_ids, views, device, dtype, channels_last: bool = False):
    """Keys and vectors for one prepared batch (shared by the local and the Ray engine)."""
    if model is None:  # handcrafted: prepared is (B, V, d)
        arr = np.asarray(prepared, np.float32)
        keys = [(p, v) for j, v in enumerate(views) for p in patch_ids]
        return keys, {"vector": np.concatenate([arr[:, j] for j in range(len(views))])}
    keys = [(p, v) for v in views for p in patch_ids]
    return keys, forward_views(model, prepared, views, device, dtype, channels_last)


def embed_pngs(model, transform, pngs: list[bytes], device: str = "cpu") -> dict[str, np.ndarray]:
    """``{output: (n, d)}`` for a few PNGs outside the job (e.g. a dashboard upload), through the
    job's own preparation and forward pass; ``(model, transform)`` come from ``embedder.build``."""
    import torch

    prepare = Prepare(transform, ("none",), pixel_views=model is None)
    prepared = np.stack([prepare(b) for b in pngs])
    x = prepared if model is None else torch.from_numpy(prepared)
    _, vectors = batch_rows(model, x, [str(i) for i in range(len(pngs))], ("none",), device, None)
    return vectors
