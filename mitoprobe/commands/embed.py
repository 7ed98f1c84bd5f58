"""``mitoprobe embed``: run one embedder over every patch in the store (thin over ``embedder.embed``)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

import mitoprobe
from mitoprobe import embedder
from mitoprobe.display import print_frame

from .options import STORE_OPTION


def _weights_text(r) -> str:
    if r.weights == "hf":
        return f"hf-hub:{r.hub_id}" + (f"@{r.revision}" if r.revision else "")
    if r.weights == "local":
        return f"{Path(r.weights_file).name} (sha256 {r.weights_sha256[:12]}…)"
    return r.weights


def _row(r) -> dict:
    return dict(name=r.name, weights=_weights_text(r), arch=r.arch,
                outputs=" + ".join(f"{k}:{d}" for k, d in r.outputs), paper=" ⊕ ".join(r.paper_outputs),
                input=f"short side→{r.resize} {r.interpolation}, crop {r.input_size}" if r.placement == "upsample"
                else f"native px on {r.input_size}", precision=r.precision)


def _print_recipes(store_path) -> None:
    """The built-in recipes, then the recipe files saved in the store (with the file each came from)."""
    print_frame(pd.DataFrame([dict(_row(r), note=r.note) for r in embedder.list_recipes()]), title="embedders")
    files = embedder.store_recipes(store_path)
    if files:  # fewer columns: the source path is what matters here
        rows = [dict(name=r.name, weights=_weights_text(r), outputs=" + ".join(f"{k}:{d}" for k, d in r.outputs),
                     precision=r.precision, source=r.source) if isinstance(r, embedder.Recipe)
                else dict(name=p.stem, weights="", outputs="", precision="", source=f"unreadable: {r}")
                for p, r in files]
        print_frame(pd.DataFrame(rows), title=f"recipe files in {files[0][0].parent}")


@click.command("embed")
@click.option("--model", "-m", "model", default=None, help="Recipe name (see --list), e.g. handcrafted, virchow2.hf.")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A recipe file (TOML: your timm model and weights; docs/recipes.md): checked, saved into the "
                   "store under its name, then embedded.")
@click.option("--list", "list_", is_flag=True,
              help="List every recipe with its outputs and dimensions, and the store's recipe files.")
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
def embed(model, recipe_file, list_, views, device, batch_size, num_workers, engine, weights, trust_pickle,
          hf_token_env, store_path) -> None:
    """Embed every patch not yet embedded under MODEL's current recipe id (incremental, resumable).

    --recipe FILE brings your own model: the file is checked (weights sha256, architecture, tensor
    shapes), saved into the store as recipes/NAME.toml, and embedded; later commands name it
    like a built-in recipe (--model NAME).

    Example: mitoprobe embed --model handcrafted; mitoprobe embed --recipe my_model.toml
    """
    if recipe_file is not None:
        if model is not None or weights is not None:
            raise click.UsageError("--recipe names the model and its weights itself: drop --model/--weights")
        added = embedder.add_recipe_file(store_path, recipe_file, trust_pickle=trust_pickle,
                                         hf_token_env=hf_token_env)
        for note in added.notes:
            click.echo(f"note: {note}")
        click.echo(f"{added.recipe.name}: recipe saved to {added.path}")
        model = added.recipe.name
    if list_ or model is None:
        _print_recipes(store_path)
        if model is None and not list_:
            raise click.UsageError("pass --model NAME (one of the recipes above) or --recipe FILE")
        return
    s = mitoprobe.open(store_path).embed(model, views=views, device=device, batch_size=batch_size, engine=engine,
                                         num_workers=num_workers, weights=weights, trust_pickle=trust_pickle,
                                         hf_token_env=hf_token_env, progress=True)
    if s.rows_written == 0:
        click.echo(f"{s.name}: nothing to do, all {s.rows_total} rows stored (recipe id {s.recipe_id})")
    else:
        click.echo(f"{s.name}: wrote {s.rows_written} rows ({s.rows_total} total) in {s.seconds:.1f} s, "
                   f"{s.patches_per_s:.1f} patches/s on {s.device} ({s.engine}); recipe id {s.recipe_id}")
