"""The embedding job: every model once over every patch, written through the store's writer.

Incremental (only (patch, view) keys missing under the current recipe id are computed) and
resumable (the writer commits one Parquet part per chunk, atomically, so a kill at any point loses
at most the chunk in flight and never duplicates a row). Torch is imported inside the functions
so that ``import embedder`` stays torch-free.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from store import Store
from store.errors import ConfigError
from store.progress import progress as progress_bar

from .batches import CHUNK_ROWS, Prepare, autocast_dtype, batch_rows
from .dihedral import view_names
from .factory import build
from .identity import identity_of, recipe_id_of
from .ray_engine import run_ray
from .recipes import Recipe, list_recipes, resolve_recipe

log = logging.getLogger(__name__)

@dataclass
class EmbedSummary:
    name: str
    recipe_id: str
    rows_written: int
    rows_total: int
    seconds: float
    patches_per_s: float
    device: str = "cpu"
    engine: str = "local"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return device


def default_batch_size(recipe: Recipe, device: str) -> int:
    if recipe.arch == "handcrafted":
        return 64
    return 256 if device.startswith("cuda") else 32


def default_workers(recipe: Recipe | None = None) -> int:
    """Decode workers: cores - 1 beside a model; every core for handcrafted (all its work is in them)."""
    n = os.cpu_count() or 2
    return max(1, min(8, n if recipe is not None and recipe.arch == "handcrafted" else n - 1))


class _Dataset:
    def __init__(self, pngs: list[bytes], prepare: Prepare):
        self.pngs, self.prepare = pngs, prepare

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int):
        return i, self.prepare(self.pngs[i])


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def _run_local(st, model, transform, patch_ids, views, device, dtype, batch_size, num_workers,
               writer, bar, on_chunk, chunk_rows) -> int:
    import torch
    from torch.utils.data import DataLoader

    pixel_views = model is None
    images = st.images(patch_ids)
    pngs = [images[p] for p in patch_ids]
    loader = DataLoader(_Dataset(pngs, Prepare(transform, views, pixel_views)), batch_size=batch_size,
                        num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                        pin_memory=device.startswith("cuda"), persistent_workers=False,
                        prefetch_factor=4 if num_workers else None)
    written, chunks = 0, 0
    buf_keys: list = []
    buf_vecs: dict[str, list] = {}

    def flush():
        nonlocal written, chunks, buf_keys, buf_vecs
        if not buf_keys:
            return
        vecs = {k: np.concatenate(v) for k, v in buf_vecs.items()}
        written += writer.write_chunk([k[0] for k in buf_keys], [k[1] for k in buf_keys], vecs)
        chunks += 1
        buf_keys, buf_vecs = [], {}
        if on_chunk is not None:
            on_chunk(chunks)

    for idx, x in loader:
        ids = [patch_ids[i] for i in idx.tolist()]
        if not pixel_views and model.recipe.arch.startswith("resnet"):
            x = x.contiguous(memory_format=torch.channels_last)
        keys, vecs = batch_rows(model, x if not pixel_views else x.numpy(), ids, views, device, dtype)
        buf_keys += keys
        for k, v in vecs.items():
            buf_vecs.setdefault(k, []).append(v)
        bar.update(len(ids))
        if len(buf_keys) >= chunk_rows:
            flush()
    flush()
    return written


def embed(store: Store | str | Path | None, model: str, views: str = "none", device: str = "auto",
          batch_size: int | None = None, engine: str = "local", num_workers: int | None = None,
          progress: bool = True, weights: str | Path | None = None, trust_pickle: bool = False,
          hf_token_env: str = "HF_TOKEN", *, chunk_rows: int = CHUNK_ROWS,
          on_chunk: Callable[[int], None] | None = None) -> EmbedSummary:
    """Embed every patch not yet embedded under ``model``'s current recipe id; returns a summary.

    ``views``: ``"none"`` or ``"d8"`` (8 dihedral views, one row per patch x view).
    ``chunk_rows``: rows per committed Parquet part (at most what a kill loses).
    ``on_chunk(n)`` is called after each committed chunk (tests use it to simulate a kill).
    """
    import torch

    st = store if isinstance(store, Store) else Store(store)
    recipe = resolve_recipe(model, st.root)  # a registered recipe, or a resolver's (e.g. a fine-tuned fold)
    vnames = view_names(views)
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}; use local or ray")
    if engine == "ray" and recipe.name not in {r.name for r in list_recipes()}:
        raise ConfigError(f"{model} is resolved inside this store (not a built-in recipe), which Ray actors on "
                          "other processes cannot see: use --engine local")
    dev = resolve_device(device)
    rid = recipe_id_of(recipe, weights)
    all_ids = st.patches(columns=["patch_id"])["patch_id"].tolist()
    rows_total = len(all_ids) * len(vnames)
    provenance = dict(identity_of(recipe, weights), recipe_name=recipe.name, recipe_hash=rid,
                      weights_revision=recipe.revision or ("main" if recipe.weights == "hf" else None),
                      run=dict(device=dev, engine=engine, views=list(vnames),
                               autocast=str(autocast_dtype(recipe, dev))))
    writer = st.features.writer(rid, recipe.name, recipe.output_dims, provenance)
    done = writer.done_keys()
    todo = [p for p in all_ids if any((p, v) not in done for v in vnames)]
    t0 = time.perf_counter()
    written = 0
    if todo:
        bs = batch_size or default_batch_size(recipe, dev)
        nw = default_workers(recipe) if num_workers is None else num_workers
        if engine == "ray":
            written = run_ray(st, recipe, todo, vnames, dev, bs, writer, weights=weights,
                              trust_pickle=trust_pickle, hf_token_env=hf_token_env, progress=progress,
                              on_chunk=on_chunk, chunk_rows=chunk_rows)
        else:
            net, transform = build(recipe, weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
            if net is not None:
                net.to(dev)
                if recipe.arch.startswith("resnet"):
                    net.to(memory_format=torch.channels_last)
            with progress_bar(total=len(todo), desc=f"embed {recipe.name}", unit="patch",
                              enabled=progress) as bar:
                written = _run_local(st, net, transform, todo, vnames, dev, autocast_dtype(recipe, dev), bs,
                                     nw, writer, bar, on_chunk, chunk_rows)
    seconds = time.perf_counter() - t0
    eset = st.features.get(rid)
    if written or not eset.complete:
        writer.finalize(expected_rows=rows_total)
    return EmbedSummary(recipe.name, rid, written, rows_total, seconds,
                        (len(todo) / seconds) if todo and seconds > 0 else 0.0, dev, engine)
