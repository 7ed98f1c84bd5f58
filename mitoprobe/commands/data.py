"""``mitoprobe data import|download``: bring the benchmark into the store (thin over ``store.Store``)."""

from __future__ import annotations

from pathlib import Path

import click

from mitoprobe.display import print_frame
from store import Store, paths
from store.download import download_benchmark
from store.errors import DataError

from .options import STORE_OPTION


def resolve_data(data_dir: Path | None, amibr_csv: Path | None) -> tuple[Path, Path | None]:
    """The benchmark folder (PATH, else the defaults) and its AMI-BR.csv (given, else found beside it)."""
    if data_dir is None:
        data_dir = paths.default_data_dir()
        if data_dir is None:
            raise DataError("no dataset found: set $MITOPROBE_DATA or pass PATH to the AMi-Br_Benchmark folder, "
                            "put it at ../shared/datasets/AMi-Br_Benchmark, or run `mitoprobe data download`")
    if amibr_csv is None:
        amibr_csv = paths.find_amibr_csv(Path(data_dir))
    return Path(data_dir), amibr_csv


def import_data(store_path: Path | None, data_dir: Path | None, amibr_csv: Path | None, quiet: bool = False,
                replace: bool = False):
    """Shared by ``data import`` and ``mitoprobe run``: resolve the data folder, import, print counts."""
    data_dir, amibr_csv = resolve_data(data_dir, amibr_csv)
    st = Store(store_path)
    click.echo(f"importing {data_dir}" + (f" (+ {amibr_csv})" if amibr_csv else " (no AMI-BR.csv found: "
               "AMi-Br test patches will lack slide ids and expert votes)"))
    outcome = st.import_dataset(data_dir, amibr_csv, progress=not quiet, replace=replace)
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
@click.option("--replace", is_flag=True,
              help="Allow the import to drop or change stored patches (vectors, folds and results refer to them).")
@STORE_OPTION
def import_cmd(path: Path | None, amibr_csv: Path | None, replace: bool, store_path: Path | None) -> None:
    """Validate and import PATH (an AMi-Br_Benchmark folder) into the patches table.

    PATH defaults to $MITOPROBE_DATA, then ../shared/datasets/AMi-Br_Benchmark, then the download
    cache. Idempotent: importing the same data twice changes nothing. New patches are added; an
    import that would drop or change stored patches is refused unless --replace.

    Example: mitoprobe data import ../shared/datasets/AMi-Br_Benchmark
    """
    import_data(store_path, path, amibr_csv, replace=replace)


@data.command("download")
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Target folder (default: user cache).")
def download_cmd(dest: Path | None) -> None:
    """Download the public AMi-Br_Benchmark dataset (needs a network).

    Example: mitoprobe data download && mitoprobe data import
    """
    out = download_benchmark(dest)
    click.echo(f"dataset ready at {out}; now run `mitoprobe data import {out}`")
