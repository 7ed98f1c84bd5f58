"""``mitoprobe store info`` and ``mitoprobe sql``: look inside the store (thin over ``store.Store``)."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb
import pandas as pd

from mitoprobe.display import human_bytes, print_frame
from store import Store
from store.errors import StoreError

from .options import STORE_OPTION


@click.group("store")
def store_group() -> None:
    """Inspect the store."""


@store_group.command("info")
@STORE_OPTION
def info_cmd(store_path: Path | None) -> None:
    """List what is stored: patch counts, embedding sets, result tables, with sizes.

    Example: mitoprobe store info
    """
    info = Store(store_path).info()
    click.echo(f"store: {info['root']}")
    if info["patches"] is None:
        click.echo("no patches yet: run `mitoprobe data import`")
    else:
        print_frame(info["patches"]["counts"], title=f"patches ({human_bytes(info['patches']['bytes'])})")
    if info["embeddings"]:
        df = pd.DataFrame(info["embeddings"])
        df["outputs"] = df["outputs"].map(lambda o: ", ".join(f"{k}:{v}" for k, v in o.items()))
        df["size"] = df.pop("bytes").map(human_bytes)
        print_frame(df, title=f"embedding sets (LanceDB {human_bytes(info['lance_bytes'])})")
    else:
        click.echo("no embedding sets yet: run `mitoprobe embed --model handcrafted`")
    if info["results"]:
        df = pd.DataFrame(info["results"])
        df["size"] = df.pop("bytes").map(human_bytes)
        print_frame(df, title="results")


@click.command()
@click.argument("query")
@STORE_OPTION
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table")
@click.option("--max-rows", type=int, default=100, show_default=True)
def sql(query: str, store_path: Path | None, fmt: str, max_rows: int) -> None:
    """Run a DuckDB QUERY over the store's tables and print the result.

    Views: patches, patch_images, folds, embedding_sets, emb_<recipe_id>, runs, predictions.

    Example: mitoprobe sql "select dataset, split, count(*) from patches group by all"
    """
    st = Store(store_path)
    try:
        df = st.sql(query)
    except duckdb.Error as exc:
        # DuckDB's message spans lines (LINE 1: ... ^); keep the gist on one line and list the views.
        gist = " ".join(ln.strip() for ln in str(exc).split("\nLINE ")[0].splitlines() if ln.strip())
        hint = "" if st.has_patches() else f" (no patches in {st.root}: run `mitoprobe data import` or pass --store)"
        raise StoreError(f"query failed: {gist} | views: {', '.join(st.views())}{hint}") from exc
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "markdown":
        click.echo(df.head(max_rows).to_markdown(index=False))
    else:
        print_frame(df, max_rows=max_rows)
