"""``mitoprobe predict`` and ``mitoprobe search``: new mitoses against what the store knows (thin over
``classifiers.predict`` / ``Workspace.search``)."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

import mitoprobe
from mitoprobe.classifiers.neighbours import DEFAULT_REFERENCE
from mitoprobe.classifiers.predict import predict_dataset
from mitoprobe.display import print_frame
from mitoprobe.store.atomic import atomic_write

from .options import STORE_OPTION


def write_csv(df: pd.DataFrame, out: Path | None, what: str) -> None:
    """``df`` to ``out`` (written to a temp file, then renamed) or, without ``out``, to stdout."""
    if out is None:
        click.echo(df.to_csv(index=False), nl=False)
        return
    atomic_write(out, lambda tmp: df.to_csv(tmp, index=False))
    click.echo(f"wrote {len(df)} {what} to {out}", err=True)


@click.command("predict")
@click.option("--model", "-m", required=True, help="Embedding set (recipe name) the family was probed on.")
@click.option("--head", required=True, help="The probe head, e.g. lgbm or logreg.")
@click.option("--dataset", required=True, help="Dataset whose patches to predict (e.g. your imported cohort).")
@click.option("--family", "family_id", default=None,
              help="A probe family id (default: the newest family of MODEL/HEAD; `mitoprobe sql` lists them).")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV file to write (default: print the CSV).")
@STORE_OPTION
def predict_cmd(model: str, head: str, dataset: str, family_id: str | None, out: Path | None,
                store_path: Path | None) -> None:
    """P(atypical) and the decision for every patch of DATASET, from a probe family's fold ensemble.

    The family's 5 fold models are refitted from the stored vectors and checked against the
    probabilities stored when it ran (no saved model file is ever unpickled). The probability is the
    mean of the fold models'; the decision uses the family's recorded threshold (chosen on
    out-of-fold probabilities). Embed the dataset with MODEL first.

    Example: mitoprobe predict --model handcrafted --head lgbm --dataset MyLab --out preds.csv
    """
    df = predict_dataset(mitoprobe.open(store_path, read_only=True).store, model, head, dataset, family_id)
    write_csv(df, out, "predictions")
    if out is not None:
        counts = df.groupby("prediction").size().rename("patches").reset_index()
        print_frame(counts, title=f"{dataset}: {df['family_label'].iloc[0]} (family {df['family_id'].iloc[0]}), "
                                  f"threshold {df['threshold'].iloc[0]:.3f}")


@click.command("search")
@click.option("--model", "-m", required=True, help="Embedding set (recipe name) to search in.")
@click.option("--dataset", required=True, help="Dataset whose patches are the queries.")
@click.option("--k", type=click.IntRange(1, 100), default=10, show_default=True, help="Neighbours per patch.")
@click.option("--reference", "references", multiple=True, default=DEFAULT_REFERENCE, show_default=True,
              help="Dataset(s) whose labelled patches are searched (repeatable).")
@click.option("--exclude-same-slide", is_flag=True, help="Never return a neighbour from the query's own slide.")
@click.option("--exclude-same-dataset", is_flag=True, help="Never return a neighbour from the query's own dataset.")
@click.option("--output", default=None, help="Which stored output to search (default: the set's first, e.g. cls).")
@click.option("--long", "long_format", is_flag=True, help="One row per (patch, neighbour) instead of one per patch.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="CSV file to write (default: print the CSV).")
@STORE_OPTION
def search_cmd(model: str, dataset: str, k: int, references: tuple[str, ...], exclude_same_slide: bool,
               exclude_same_dataset: bool, output: str | None, long_format: bool, out: Path | None,
               store_path: Path | None) -> None:
    """The k nearest labelled reference mitoses of every patch of DATASET.

    Cosine distance on the vectors z-scored with AMi-Br-train statistics (the dashboard's similarity
    search, LanceDB). One row per patch: each neighbour's id, label, expert votes, slide and
    distance, and the share of atypical neighbours.

    Example: mitoprobe search --model handcrafted --dataset MyLab --k 10 --out neighbours.csv
    """
    ws = mitoprobe.open(store_path, read_only=True)
    df = ws.search(model, dataset, k=k, reference=tuple(references), exclude_same_slide=exclude_same_slide,
                   exclude_same_dataset=exclude_same_dataset, output=output, long=long_format)
    write_csv(df.drop(columns=["query"], errors="ignore"), out, "rows")
