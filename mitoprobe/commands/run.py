"""``mitoprobe run``: the main job (thin over ``mitoprobe.main_job``)."""

from __future__ import annotations

import time
from pathlib import Path

import click

import mitoprobe
from mitoprobe.display import print_report
from mitoprobe.main_job import best_offline_family, run_main_job, run_offline_full

from .options import STORE_OPTION


@click.command("run")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="AMi-Br_Benchmark folder (default: $MITOPROBE_DATA, ../shared/datasets, the download cache).")
@click.option("--model", "models", multiple=True, help="Embedders to run (default: the offline defaults).")
@click.option("--head", "heads", default="all", show_default=True, help="'all' or a comma list of heads.")
@click.option("--views", type=click.Choice(["none", "d8"]), default="none", show_default=True,
              help="d8: embed 8 dihedral views and probe with test-time augmentation (8x the embedding time).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "none"]), default="table", show_default=True,
              help="none: print no leaderboard (a run whose test numbers are read later, once).")
@click.option("--full", is_flag=True,
              help="Also the offline preset end to end: morphology features and their probes, a small CNN fine-tuned "
                   "from scratch on 5 folds, its fold checkpoints as embedders (probes alone and + handcrafted), "
                   "late fusions of the CNN with the probes, and the best family named on held-out scores "
                   "(26 min on 2 idle cores, CPU capability AVX2, fp32).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the probes and, with --full, of the whole preset (the CNN's initialisation and draws, "
                   "its probes, the fusions): another seed on a fresh store measures the seed spread.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch CPU threads (default: torch's; 1 on a busy machine).")
@STORE_OPTION
def run(data_dir: Path | None, models: tuple[str, ...], heads: str, views: str, fmt: str, full: bool,
        seed: int, threads: int | None, store_path: Path | None) -> None:
    """The main job: import the data if needed, embed with the offline embedders, probe, report.

    Every stage is incremental, so a second run only prints the leaderboard.

    With --full it then trains the offline preset (no downloads) and reports it beside the probes.

    Example: mitoprobe run

    Example: mitoprobe run --full --seed 1 --store stores/seed1
    """
    if threads:
        import torch  # lazy: only when asked to change torch's threads

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    head_list = None if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    timings = run_main_job(store_path, data_dir, models or None, head_list, views, "none" if full else fmt, seed)
    if full:
        timings.update(run_offline_full(store_path, seed=seed))
        if fmt != "none":
            print_report(mitoprobe.open(store_path).store, fmt)
        click.echo(best_offline_family(store_path))
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    click.echo(f"main job done in {time.perf_counter() - t0:.0f} s ({parts})")
