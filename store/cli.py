"""CLI for the store: ``data import|download``, ``store info``, ``sql``. Thin over ``store.Store``."""

from __future__ import annotations

from pathlib import Path

import click

from . import paths
from .errors import DataError

STORE_OPTION = click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
                            help="Store folder (default $MITOPROBE_STORE or ./mitoprobe-store).")


def import_data(store_path: Path | None, data_dir: Path | None, amibr_csv: Path | None, quiet: bool = False):
    """Shared by ``data import`` and ``mitoprobe run``: resolve the data folder, import, print counts."""
    from mitoprobe.display import print_frame

    from .store import Store

    if data_dir is None:
        data_dir = paths.default_data_dir()
        if data_dir is None:
            raise DataError("no dataset found: set $MITOPROBE_DATA or pass PATH to the AMi-Br_Benchmark folder, "
                            "put it at ../shared/datasets/AMi-Br_Benchmark, or run `mitoprobe data download`")
    if amibr_csv is None:
        amibr_csv = paths.find_amibr_csv(Path(data_dir))
    st = Store(store_path)
    click.echo(f"importing {data_dir}" + (f" (+ {amibr_csv})" if amibr_csv else " (no AMI-BR.csv found: "
               "AMi-Br test patches will lack slide ids and expert votes)"))
    outcome = st.import_dataset(data_dir, amibr_csv, progress=not quiet)
    for note in outcome.notes:
        click.secho(f"note: {note}", fg="yellow")
    if outcome.changed:
        click.echo(f"imported into {outcome.path}")
    else:
        click.echo(f"nothing changed: {outcome.path} already holds exactly this data")
    if not quiet:
        print_frame(outcome.counts, title="patches")
    return outcome


@click.group()
def data() -> None:
    """Import the AMi-Br benchmark into the store, or download it."""


@data.command("import")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--amibr-csv", type=click.Path(path_type=Path), default=None,
              help="AMI-BR.csv with slides, 3 expert votes and subtypes (found automatically when beside PATH).")
@STORE_OPTION
def import_cmd(path: Path | None, amibr_csv: Path | None, store_path: Path | None) -> None:
    """Validate and import PATH (an AMi-Br_Benchmark folder) into the patches table.

    PATH defaults to $MITOPROBE_DATA, then ../shared/datasets/AMi-Br_Benchmark, then the download
    cache. Idempotent: importing the same data twice changes nothing.

    Example: mitoprobe data import ../shared/datasets/AMi-Br_Benchmark
    """
    import_data(store_path, path, amibr_csv)


@data.command("download")
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Target folder (default: user cache).")
def download_cmd(dest: Path | None) -> None:
    """Download the public AMi-Br_Benchmark dataset (needs a network).

    Example: mitoprobe data download && mitoprobe data import
    """
    from .download import download_benchmark

    out = download_benchmark(dest)
    click.echo(f"dataset ready at {out}; now run `mitoprobe data import {out}`")


@click.group("store")
def store_group() -> None:
    """Inspect the store."""


@store_group.command("info")
@STORE_OPTION
def info_cmd(store_path: Path | None) -> None:
    """List what is stored: patch counts, embedding sets, result tables, with sizes.

    Example: mitoprobe store info
    """
    import pandas as pd

    from mitoprobe.display import human_bytes, print_frame

    from .store import Store

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
    import duckdb

    from mitoprobe.display import print_frame

    from .errors import StoreError
    from .store import Store

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
