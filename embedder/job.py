"""The embedding job: every model once over every patch, written through the store's writer.

Incremental (only (patch, view) keys missing under the current recipe id are computed) and
resumable (the writer commits one Parquet part per chunk, atomically, so a kill at any point loses
at most the chunk in flight and never duplicates a row). Torch is imported inside the functions
so that ``import mitoprobe.embedder`` stays torch-free.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from mitoprobe.store import Store
from mitoprobe.store.integrity import preflight
from mitoprobe.store.patch_parts import read_row_group
from mitoprobe.store.errors import ConfigError, MitoprobeError
from mitoprobe.store.progress import progress as progress_bar

from .batches import CHUNK_ROWS, Prepare, autocast_dtype, batch_rows, prefers_channels_last
from .dihedral import view_names
from .factory import build, check_weights, check_weights_option, hub_revision
from .hub import hub_commit
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
    """``auto`` -> cuda when torch sees one, else cpu; any other value must name a usable device
    (``cpu``, ``cuda``, ``cuda:N`` with N < the GPU count; ``mps`` where torch has it)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but torch sees no CUDA device; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {device} asked for, but torch has no MPS device here; use --device cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"--device {device!r}: unsupported device type {dev.type!r}; use auto, cpu, cuda or cuda:N")
    return device


def default_batch_size(recipe: Recipe, device: str) -> int:
    if recipe.arch == "handcrafted":
        return 64
    return 256 if device.startswith("cuda") else 32


def default_workers(recipe: Recipe | None = None) -> int:
    """Decode workers: cores - 1 beside a model; every core for handcrafted (all its work is in them)."""
    n = os.cpu_count() or 2
    return max(1, min(8, n if recipe is not None and recipe.arch == "handcrafted" else n - 1))


class _RowGroups:
    """The patches to embed as a stream of the store's row groups (``torch`` IterableDataset protocol):
    worker ``i`` of ``n`` reads row groups ``i, i + n, ...`` itself, keeps the wanted rows and yields
    ``(patch_id, prepared pixels)``. No process ever holds more than a row group of PNGs."""

    def __init__(self, groups: list, prepare: Prepare):
        self.groups, self.prepare = groups, prepare  # groups: (part, row group, ids wanted from it)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        for path, g, ids in self.groups[wid::n]:
            t = read_row_group(path, g, ("patch_id", "png"), ids)
            for pid, png in zip(t["patch_id"].to_pylist(), t["png"].to_pylist()):
                yield pid, self.prepare(png)


def _iterable(ds: _RowGroups):
    """``ds`` as a torch ``IterableDataset`` (torch is imported only when a job runs)."""
    from torch.utils.data import IterableDataset

    class _Stream(IterableDataset):
        def __iter__(self):
            return iter(ds)
    return _Stream()


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def _run_local(st, model, transform, patch_ids, views, device, dtype, batch_size, num_workers,
               writer, bar, on_chunk, chunk_rows) -> int:
    from torch.utils.data import DataLoader

    pixel_views = model is None
    groups = st.patch_parts.row_group_ids(patch_ids)
    num_workers = min(num_workers, len(groups))
    # The workers only decode PNGs; they never touch LanceDB, whose "fork support is experimental"
    # warning (an earlier set's table build started its runtime in this process) is noise here.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
    dataset = _iterable(_RowGroups(groups, Prepare(transform, views, pixel_views)))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        worker_init_fn=_worker_init if num_workers else None,
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

    channels_last = not pixel_views and prefers_channels_last(model.recipe, device)  # applied on the device
    for ids, x in loader:
        ids = list(ids)
        keys, vecs = batch_rows(model, x if not pixel_views else x.numpy(), ids, views, device, dtype, channels_last)
        buf_keys += keys
        for k, v in vecs.items():
            buf_vecs.setdefault(k, []).append(v)
        bar.update(len(ids))
        if len(buf_keys) >= chunk_rows:
            flush()
    flush()
    return written


def check_job_options(batch_size: int | None, num_workers: int | None, engine: str, chunk_rows: int) -> None:
    """ConfigError for a job option that cannot work, before anything is built or written."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1 (or leave it out for the default)")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"--num-workers {num_workers}: must be 0 (decode in the main process) or more")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows {chunk_rows}: must be at least 1")
    if engine not in ("local", "ray"):
        raise ConfigError(f"unknown engine {engine!r}; use local or ray")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs the ray package (pip install 'ray[data]'); or use --engine local")


def _stored_keys(st: Store, recipe_id: str) -> set[tuple[str, str]]:
    """(patch_id, view) keys already stored under ``recipe_id``, read without opening a writer
    (which takes the set's lock and creates its folder): how the job knows, before writing anything,
    whether it must build the model at all."""
    for eset in st.features.sets():
        if eset.recipe_id == recipe_id:
            return st.features.stored_keys(eset)
    return set()


def _todo(all_ids: list[str], done: set, vnames: tuple[str, ...]) -> list[str]:
    return [p for p in all_ids if any((p, v) not in done for v in vnames)]


def embed(store: Store | str | Path | None, model: str, views: str = "none", device: str = "auto",
          batch_size: int | None = None, engine: str = "local", num_workers: int | None = None,
          progress: bool = True, weights: str | Path | None = None, trust_pickle: bool = False,
          hf_token_env: str = "HF_TOKEN", *, chunk_rows: int = CHUNK_ROWS,
          on_chunk: Callable[[int], None] | None = None) -> EmbedSummary:
    """Embed every patch not yet embedded under ``model``'s current recipe id; returns a summary.

    ``views``: ``"none"`` or ``"d8"`` (8 dihedral views, one row per patch x view).
    ``chunk_rows``: rows per committed Parquet part (at most what a kill loses).
    ``on_chunk(n)`` is called after each committed chunk (tests use it to simulate a kill).

    Everything that can fail on the arguments fails before the first write: options, recipe,
    weights (the model is built, or for Ray checked, before the set's folder is created).
    """
    check_job_options(batch_size, num_workers, engine, chunk_rows)
    st = store if isinstance(store, Store) else Store(store)
    recipe = resolve_recipe(model, st.root)  # a registered recipe, or a resolver's (e.g. a fine-tuned fold)
    vnames = view_names(views)
    check_weights_option(recipe, weights)
    if engine == "ray" and recipe.name not in {r.name for r in list_recipes()}:
        raise ConfigError(f"{model} is resolved inside this store (not a built-in recipe), which Ray actors on "
                          "other processes cannot see: use --engine local")
    dev = resolve_device(device)
    commit, hub_error = _served_commit(recipe, weights, hf_token_env, st)
    rid = recipe_id_of(recipe, weights, st.root, hub_revision=commit)
    preflight(st, embedding_set=rid)  # a damaged store: refused before COMPLETE or any chunk is touched
    load = replace(recipe, revision=commit) if commit else recipe  # load exactly the commit in the id
    all_ids = st.patches(columns=["patch_id"])["patch_id"].tolist()
    rows_total = len(all_ids) * len(vnames)
    net = transform = None
    built = False
    if _todo(all_ids, _stored_keys(st, rid), vnames):  # work to do: the model must exist before any write
        if hub_error is not None:
            raise hub_error
        if engine == "ray":
            check_weights(load, weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
        else:
            net, transform = _build_local(load, weights, trust_pickle, hf_token_env, dev)
            built = True
    identity = identity_of(recipe, weights, hub_revision=commit, store_root=st.root)
    provenance = dict(identity, recipe_name=recipe.name, recipe_hash=rid,
                      weights_revision=identity["weights"].get("revision"),
                      weights_requested=recipe.revision or ("main" if recipe.weights == "hf" else None),
                      run=dict(device=dev, engine=engine, views=list(vnames),
                               autocast=str(autocast_dtype(recipe, dev))))
    with st.features.writer(rid, recipe.name, recipe.output_dims, provenance) as writer:
        todo = _todo(all_ids, writer.done_keys(), vnames)  # again: another job may have written meanwhile
        t0 = time.perf_counter()
        written = 0
        if todo:
            bs = batch_size or default_batch_size(recipe, dev)
            nw = default_workers(recipe) if num_workers is None else num_workers
            if engine == "ray":
                written = run_ray(st, load, todo, vnames, dev, bs, writer, weights=weights,
                                  trust_pickle=trust_pickle, hf_token_env=hf_token_env, progress=progress,
                                  on_chunk=on_chunk, chunk_rows=chunk_rows)
            else:
                if not built:  # parts vanished between the two looks: build now
                    if hub_error is not None:
                        raise hub_error
                    net, transform = _build_local(load, weights, trust_pickle, hf_token_env, dev)
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


def _served_commit(recipe: Recipe, weights, hf_token_env: str, st: Store):
    """(commit, error) for a hub recipe loaded from the hub (else (None, None)): the commit the hub
    serves now (``factory.hub_revision``), which enters the recipe id and is what gets loaded. When
    the hub cannot be reached, the commit already known without network (the local cache, else the
    newest stored set) stands in, so a store copied to an offline machine still finds its complete
    sets ("nothing to do"); the error is raised only if there is work to do."""
    if weights is not None or recipe.weights != "hf":
        return None, None
    try:
        return hub_revision(recipe, hf_token_env), None
    except MitoprobeError as exc:
        known = hub_commit(recipe, st.root)
        if known is None:
            raise
        log.warning("%s: the hub cannot be reached (%s); using commit %s, known locally", recipe.name, exc, known)
        return known, exc


def _build_local(recipe: Recipe, weights, trust_pickle: bool, hf_token_env: str, dev: str):
    """The model on ``dev`` (weights loaded, hub reached) and its transform."""
    import torch

    net, transform = build(recipe, weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
    if net is not None:
        net.to(dev)
        if prefers_channels_last(recipe, dev):
            net.to(memory_format=torch.channels_last)
        if dev.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # one input size: cuDNN picks its fastest kernels once
    return net, transform
