"""The same job on Ray Data: one model replica per actor (per GPU on a cluster), ``map_batches``
over the patches still to do; the driver writes every chunk through the same store writer, so
resumability and the no-duplicate guarantee are the local engine's.

On a multi-node cluster: ``ray start --head`` / ``ray start --address=...`` on the nodes, put the
store where the driver runs (it streams the PNG bytes of the patches still to do through Ray's
object store to the actors), then
``RAY_ADDRESS=auto mitoprobe embed --model NAME --engine ray --store /shared/store``.
One actor per GPU is started (``num_gpus=1`` each) when CUDA is used.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store.progress import progress as progress_bar

from .batches import CHUNK_ROWS, Prepare, autocast_dtype, batch_rows
from .factory import build
from .recipes import get_recipe


class EmbedActor:
    """Holds one model replica; ``__call__`` maps a batch of {patch_id, png} to stored rows."""

    def __init__(self, recipe_name: str, views: tuple[str, ...], device: str, weights=None,
                 trust_pickle: bool = False, hf_token_env: str = "HF_TOKEN"):
        import torch

        if device == "cpu":
            torch.set_num_threads(1)
        self.recipe = get_recipe(recipe_name)
        self.views, self.device = tuple(views), device
        self.model, transform = build(self.recipe, weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
        if self.model is not None:
            self.model.to(device)
        self.prepare = Prepare(transform, self.views, pixel_views=self.model is None)
        self.dtype = autocast_dtype(self.recipe, device)

    def __call__(self, batch: dict) -> dict:
        import torch

        ids = [str(p) for p in batch["patch_id"]]
        prepared = np.stack([self.prepare(b) for b in batch["png"]])
        x = prepared if self.model is None else torch.from_numpy(prepared)
        keys, vecs = batch_rows(self.model, x, ids, self.views, self.device, self.dtype)
        out = {"patch_id": np.array([k[0] for k in keys], dtype=object),
               "view": np.array([k[1] for k in keys], dtype=object)}
        out.update(vecs)
        return out


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
    # The driver reads only the rows still to do (PNG bytes, ~32 kB each) into the object store;
    # the actors are then the only stage that needs cluster resources.
    images = st.images(todo)
    table = pa.table({"patch_id": pa.array(todo, pa.string()), "png": pa.array([images[p] for p in todo], pa.binary())})
    blocks = max(1, min(len(todo) // max(1, batch_size), 4 * num_actors))
    bounds = [i * len(todo) // blocks for i in range(blocks + 1)]
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    ds = ds.map_batches(
        EmbedActor, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs=dict(recipe_name=recipe.name, views=tuple(views), device=device,
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
