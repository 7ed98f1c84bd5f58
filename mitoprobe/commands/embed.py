"""``mitoprobe embed``: run one embedder over every patch in the store (thin over ``embedder.embed``)."""

from __future__ import annotations

from pathlib import Path

import click

import pandas as pd

import embedder
from mitoprobe.display import print_frame

from .options import STORE_OPTION


def _print_recipes() -> None:
    rows = [dict(name=r.name, weights=r.weights if r.weights != "hf" else f"hf-hub:{r.hub_id}",
                 arch=r.arch, outputs=" + ".join(f"{k}:{d}" for k, d in r.outputs),
                 paper=" ⊕ ".join(r.paper_outputs),
                 input=f"128→{r.resize} {r.interpolation}, crop {r.input_size}" if r.placement == "upsample"
                 else f"native 128 px on {r.input_size}", note=r.note) for r in embedder.list_recipes()]
    print_frame(pd.DataFrame(rows), title="embedders")


@click.command("embed")
@click.option("--model", "-m", "model", default=None, help="Recipe name (see --list), e.g. handcrafted, virchow2.hf.")
@click.option("--list", "list_", is_flag=True, help="List every recipe with its outputs and dimensions.")
@click.option("--views", type=click.Choice(["none", "d8"]), default="none", show_default=True,
              help="d8 also stores the 8 dihedral views of each patch (test-time augmentation).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Default: 256 on GPU, 32 on CPU, 64 handcrafted.")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="PNG-decoding DataLoader workers (default: cores - 1; 0 = in the main process).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: Ray Data actors, one model replica per GPU (RAY_ADDRESS picks the cluster).")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Local weights file replacing the hub download (.safetensors; .pt/.bin state dicts).")
@click.option("--trust-pickle", is_flag=True, help="Allow --weights files that need full unpickling (runs their code).")
@click.option("--hf-token-env", default="HF_TOKEN", show_default=True,
              help="Environment variable holding the Hugging Face token (read, never written).")
@STORE_OPTION
def embed(model, list_, views, device, batch_size, num_workers, engine, weights, trust_pickle, hf_token_env,
          store_path) -> None:
    """Embed every patch not yet embedded under MODEL's current recipe id (incremental, resumable).

    Example: mitoprobe embed --model handcrafted
    """
    if list_ or model is None:
        _print_recipes()
        if model is None and not list_:
            raise click.UsageError("pass --model NAME (one of the recipes above)")
        return
    s = embedder.embed(store_path, model, views=views, device=device, batch_size=batch_size, engine=engine,
                  num_workers=num_workers, weights=weights, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
    if s.rows_written == 0:
        click.echo(f"{s.name}: nothing to do, all {s.rows_total} rows stored (recipe id {s.recipe_id})")
    else:
        click.echo(f"{s.name}: wrote {s.rows_written} rows ({s.rows_total} total) in {s.seconds:.1f} s, "
                   f"{s.patches_per_s:.1f} patches/s on {s.device} ({s.engine}); recipe id {s.recipe_id}")
