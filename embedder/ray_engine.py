"""The same job on Ray Data: one model replica per actor (per GPU on a cluster), ``map_batches``
over the patches still to do; the driver writes every chunk through the same store writer, so
resumability and the no-duplicate guarantee are the local engine's.

On a multi-node cluster: ``ray start --head`` / ``ray start --address=...`` on the nodes, put the
store on a file system every node mounts at the same path (Ray tasks read the PNGs of the patches
still to do from the store's part files, a row group each, and stream them to the actors; only the
driver writes), then
``RAY_ADDRESS=auto mitoprobe embed --model NAME --engine ray --store /shared/store``.
One actor per GPU is started (``num_gpus=1`` each) when CUDA is used.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mitoprobe.store.patch_parts import read_row_group
from mitoprobe.store.progress import progress as progress_bar

from .batches import CHUNK_ROWS, Prepare, autocast_dtype, batch_rows
from .factory import build
from .recipes import Recipe


class EmbedActor:
    """Holds one model replica; ``__call__`` maps a block of {patch_id, png} (one row group of the
    store) to stored rows, ``batch_size`` patches per forward pass. The recipe itself travels to the actor
    (not its name), so one registered only in the driver's process (a recipe file) builds there too."""

    def __init__(self, recipe: Recipe, views: tuple[str, ...], device: str, batch_size: int, weights=None,
                 trust_pickle: bool = False, hf_token_env: str = "HF_TOKEN"):
        import torch

        if device == "cpu":
            torch.set_num_threads(1)
        self.recipe = recipe
        self.views, self.device = tuple(views), device
        self.model, transform = build(self.recipe, weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
        if self.model is not None:
            self.model.to(device)
        self.prepare = Prepare(transform, self.views, pixel_views=self.model is None)
        self.dtype = autocast_dtype(self.recipe, device)
        self.batch_size = batch_size

    def __call__(self, block: dict) -> dict:
        import torch

        keys: list = []
        parts: dict[str, list] = {}
        for a in range(0, len(block["patch_id"]), self.batch_size):
            ids = [str(p) for p in block["patch_id"][a:a + self.batch_size]]
            prepared = np.stack([self.prepare(b) for b in block["png"][a:a + self.batch_size]])
            x = prepared if self.model is None else torch.from_numpy(prepared)
            k, vecs = batch_rows(self.model, x, ids, self.views, self.device, self.dtype)
            keys += k
            for name, v in vecs.items():
                parts.setdefault(name, []).append(v)
        out = {"patch_id": np.array([k[0] for k in keys], dtype=object),
               "view": np.array([k[1] for k in keys], dtype=object)}
        out.update({name: np.concatenate(v) for name, v in parts.items()})
        return out


def _read_groups(batch: pa.Table) -> pa.Table:
    """A Ray task: the rows (patch_id, png) of the ids still to do in the row groups named in ``batch``."""
    from pathlib import Path

    tables = [read_row_group(Path(p), int(g), ("patch_id", "png"), ids)
              for p, g, ids in zip(batch["path"].to_pylist(), batch["group"].to_pylist(), batch["ids"].to_pylist())]
    return pa.concat_tables(tables)


def run_ray(st, recipe, todo, views, device, batch_size, writer, *, weights=None, trust_pickle=False,
            hf_token_env="HF_TOKEN", progress=True, on_chunk=None, chunk_rows: int = CHUNK_ROWS,
            num_actors: int | None = None) -> int:
    import ray

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    gpus = device.startswith("cuda")
    if num_actors is None:
        res = ray.cluster_resources()
        num_actors = max(1, int(res.get("GPU", 0)) if gpus else min(4, int(res.get("CPU", 1))))
    # Nothing holds the PNGs: Ray tasks read the store's row groups holding patches still to do
    # (one row group, <= 1024 patches, per task) straight from the part files, so the store must be
    # on a path every node reads (a shared file system: docs/design.md), and stream them to the actors.
    groups = st.patch_parts.row_group_ids(todo)
    ds = ray.data.from_items([{"path": str(p), "group": g, "ids": ids} for p, g, ids in groups],
                             override_num_blocks=max(1, len(groups)))
    ds = ds.map_batches(_read_groups, batch_size=1, batch_format="pyarrow")
    # batch_size=None: one row group per actor call (the actor makes its own batches). With a batch size
    # here, Ray would bundle that many row-group *items* into one task, and the first vectors would
    # come back only after batch_size x 1,024 patches.
    ds = ds.map_batches(
        EmbedActor, batch_size=None, batch_format="numpy",
        fn_constructor_kwargs=dict(recipe=recipe, views=tuple(views), device=device, batch_size=batch_size,
                                   weights=str(weights) if weights else None, trust_pickle=trust_pickle,
                                   hf_token_env=hf_token_env),
        compute=ray.data.ActorPoolStrategy(size=num_actors), num_gpus=1 if gpus else 0, num_cpus=1)
    written = chunks = 0
    outputs = list(recipe.output_dims)
    with progress_bar(total=len(todo), desc=f"embed {recipe.name} (ray)", unit="patch", enabled=progress) as bar:
        for b in ds.iter_batches(batch_size=chunk_rows, batch_format="numpy"):
            vecs = {k: np.asarray(b[k], dtype=np.float32) for k in outputs}
            n = writer.write_chunk(list(b["patch_id"]), list(b["view"]), vecs)
            written += n
            chunks += 1
            bar.update(len(b["patch_id"]) // len(views))
            if on_chunk is not None:
                on_chunk(chunks)
    return written
