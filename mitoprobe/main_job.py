"""``mitoprobe run``: the main job, import -> embed (offline defaults) -> probe sweep -> leaderboard."""

from __future__ import annotations

import time
from pathlib import Path

import click

from store.cli import STORE_OPTION


def run_main_job(store_path: Path | None = None, data_dir: Path | None = None, models: tuple[str, ...] | None = None,
                 heads: list[str] | None = None, views: str = "none", fmt: str = "table") -> dict[str, float]:
    """Run every stage; each is incremental (import is skipped when patches exist, embedding
    resumes, identical probe configurations are skipped). Returns seconds per stage."""
    import embedder
    from classifiers.cli import print_report
    from classifiers.runner import sweep
    from store import Store
    from store.cli import import_data

    timings: dict[str, float] = {}
    st = Store(store_path)
    t = time.perf_counter()
    if not st.has_patches():
        import_data(store_path, data_dir, None, quiet=True)
    timings["import"] = time.perf_counter() - t
    for model in models or embedder.OFFLINE_DEFAULTS:
        t = time.perf_counter()
        s = embedder.embed(st, model, views=views)
        timings[f"embed {model}"] = time.perf_counter() - t
        click.echo(f"embedded {model}: {s.rows_written} new rows of {s.rows_total} in {s.seconds:.0f} s")
        t = time.perf_counter()
        sweep(st, model, heads=heads, tta=views != "none")
        timings[f"probe {model}"] = time.perf_counter() - t
    print_report(st, fmt)
    return timings


@click.command("run")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="AMi-Br_Benchmark folder (default: $MITOPROBE_DATA, ../shared/datasets, the download cache).")
@click.option("--model", "models", multiple=True, help="Embedders to run (default: the offline defaults).")
@click.option("--head", "heads", default="all", show_default=True, help="'all' or a comma list of heads.")
@click.option("--views", type=click.Choice(["none", "d8"]), default="none", show_default=True,
              help="d8: embed 8 dihedral views and probe with test-time augmentation (8x the embedding time).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table", show_default=True)
@click.option("--full", is_flag=True, help="Foundation models on a GPU box (not implemented yet).")
@STORE_OPTION
def run(data_dir: Path | None, models: tuple[str, ...], heads: str, views: str, fmt: str, full: bool,
        store_path: Path | None) -> None:
    """The main job: import the data if needed, embed with the offline embedders, probe, report.

    Every stage is incremental, so a second run only prints the leaderboard.

    Example: mitoprobe run
    """
    from store.errors import StoreError

    if full:
        raise StoreError("--full (foundation-model weights on a GPU) is not implemented yet; "
                         "run `mitoprobe run` for the offline defaults")
    t0 = time.perf_counter()
    head_list = None if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    timings = run_main_job(store_path, data_dir, models or None, head_list, views, fmt)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    click.echo(f"main job done in {time.perf_counter() - t0:.0f} s ({parts})")
