"""``mitoprobe data import|download``: bring the benchmark into the store (thin over the library: ``mitoprobe.open``)."""

from __future__ import annotations

from pathlib import Path

import click

import mitoprobe
from mitoprobe.display import import_benchmark, report_import
from mitoprobe.store.cohort_example import write_example_cohort
from mitoprobe.store.download import download_benchmark

from .options import STORE_OPTION


@click.group()
def data() -> None:
    """Import the AMi-Br benchmark or your own patches into the store, or download the benchmark."""


@data.command("import")
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option("--manifest", type=click.Path(path_type=Path), default=None,
              help="Your own patches: a CSV with a 'path' column (relative to the CSV) and optional label, slide, "
                   "split, x, y (other columns are kept as metadata). Needs --dataset.")
@click.option("--dataset", default=None,
              help="Import PATH (a folder: ROOT/{Atypical,Normal}/* or unlabelled images) or --manifest as your "
                   "own dataset of this name, beside the benchmark.")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True,
              help="Split of a folder's patches (a manifest says it per row).")
@click.option("--amibr-csv", type=click.Path(path_type=Path), default=None,
              help="AMI-BR.csv with slides, 3 expert votes and subtypes (found automatically when beside PATH).")
@click.option("--replace", is_flag=True,
              help="Allow the import to drop or change stored patches (vectors, folds and results refer to them).")
@STORE_OPTION
def import_cmd(path: Path | None, manifest: Path | None, dataset: str | None, split: str, amibr_csv: Path | None,
               replace: bool, store_path: Path | None) -> None:
    """Validate and import patches into the store's patches table.

    Without --dataset, PATH is an AMi-Br_Benchmark folder (default: $MITOPROBE_DATA, then
    ../shared/datasets/AMi-Br_Benchmark, then the download cache). With --dataset NAME, PATH or
    --manifest is your own cohort: PNG, JPEG or TIFF patches of any size, labelled or not; its
    split=test patches become an extra test set named NAME. Idempotent: importing the same data twice
    changes nothing; new files are added (only their rows are written, as a new part of the table,
    whatever the store's size), and an import that would drop or change stored patches is refused
    unless --replace. Every problem is listed at once and nothing is written on error.

    \b
    Examples:
      mitoprobe data import ../shared/datasets/AMi-Br_Benchmark
      mitoprobe data import --manifest cohort/manifest.csv --dataset MyLab
      mitoprobe data import cohort/unlabelled --dataset MyLab-new
    """
    if dataset is None:
        if manifest is not None:
            raise click.UsageError("--manifest needs --dataset NAME (the name your cohort is stored and scored under)")
        import_benchmark(mitoprobe.open(store_path, create=True), path, amibr_csv, replace=replace)
        return
    if amibr_csv is not None:
        raise click.UsageError("--amibr-csv belongs to the benchmark import (without --dataset)")
    if (path is None) == (manifest is None):
        raise click.UsageError("with --dataset, give either PATH (a folder of patches) or --manifest FILE.csv")
    ws = mitoprobe.open(store_path, create=True)
    outcome = ws.import_cohort(dataset, manifest=manifest, folder=path, split=split, progress=True, replace=replace)
    report_import(outcome)


@data.command("example-cohort")
@click.argument("dest", type=click.Path(path_type=Path))
def example_cohort_cmd(dest: Path) -> None:
    """Write a small synthetic cohort (JPEG + PNG, sizes other than 128 px, some unlabelled, a
    manifest) to DEST, to try the bring-your-own-cohort commands on.

    Example: mitoprobe data example-cohort my-cohort && mitoprobe data import --manifest my-cohort/manifest.csv --dataset MyLab
    """
    manifest = write_example_cohort(dest)
    click.echo(f"wrote {manifest}; now run `mitoprobe data import --manifest {manifest} --dataset MyLab`")


@data.command("download")
@click.option("--dest", type=click.Path(path_type=Path), default=None, help="Target folder (default: user cache).")
def download_cmd(dest: Path | None) -> None:
    """Download the public AMi-Br_Benchmark dataset (needs a network).

    Example: mitoprobe data download && mitoprobe data import
    """
    out = download_benchmark(dest)
    click.echo(f"dataset ready at {out}; now run `mitoprobe data import {out}`")
