"""``mitoprobe run``: the main job, import -> embed (offline defaults) -> probe sweep -> leaderboard.

``mitoprobe run --full`` adds the offline fine-tuning preset end to end: train the small CNN from
scratch on the 5 folds (``finetune --preset offline``), embed every patch with each fold's checkpoint,
probe each fold's vectors under its own fold alone and concatenated with the handcrafted features.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from store import Store
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
    if fmt != "none":
        print_report(st, fmt)
    return timings


FULL_HEADS = ("logreg", "lgbm")  # the probes on the fine-tuned folds' vectors (alone and + handcrafted)


def run_offline_full(store_path: Path | None = None, folds: str | None = None, heads=FULL_HEADS,
                     num_workers: int = 1, config=None) -> dict[str, float]:
    """The offline preset (or ``config``): fine-tune 5 folds, embed with each fold's checkpoint, probe.
    Returns seconds per stage. Needs the handcrafted set (``run_main_job`` makes it first)."""
    import embedder
    from classifiers.runner import sweep
    from embedder.finetune import FinetuneConfig, finetune
    from store import Store

    timings: dict[str, float] = {}
    st = Store(store_path)
    t = time.perf_counter()
    s = finetune(st, config or FinetuneConfig.preset("offline"), folds, num_workers=num_workers)
    timings["finetune offline (5 folds)"] = time.perf_counter() - t
    click.echo(f"fine-tuned run {s.run_key[:8]}: folds {s.folds_done}")
    t = time.perf_counter()
    names = [embedder.embed(st, f"ft:{s.run_key[:8]}/fold{k}", num_workers=num_workers).name for k in s.folds_done]
    timings["embed fold checkpoints"] = time.perf_counter() - t
    t = time.perf_counter()
    for name in names:
        sweep(st, name, heads=list(heads))
        sweep(st, f"{name}+handcrafted", heads=list(heads))
    timings["probe fold checkpoints"] = time.perf_counter() - t
    return timings


@click.command("run")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="AMi-Br_Benchmark folder (default: $MITOPROBE_DATA, ../shared/datasets, the download cache).")
@click.option("--model", "models", multiple=True, help="Embedders to run (default: the offline defaults).")
@click.option("--head", "heads", default="all", show_default=True, help="'all' or a comma list of heads.")
@click.option("--views", type=click.Choice(["none", "d8"]), default="none", show_default=True,
              help="d8: embed 8 dihedral views and probe with test-time augmentation (8x the embedding time).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv"]), default="table", show_default=True)
@click.option("--full", is_flag=True,
              help="Also the offline preset end to end: a small CNN fine-tuned from scratch on 5 folds (about 17 min "
                   "on 2 idle CPU cores), its fold checkpoints as embedders, probes alone and + handcrafted.")
@click.option("--threads", type=int, default=None, help="Torch CPU threads (default: torch's; 1 on a busy machine).")
@STORE_OPTION
def run(data_dir: Path | None, models: tuple[str, ...], heads: str, views: str, fmt: str, full: bool,
        threads: int | None, store_path: Path | None) -> None:
    """The main job: import the data if needed, embed with the offline embedders, probe, report.

    Every stage is incremental, so a second run only prints the leaderboard.

    With --full it then trains the offline preset (no downloads) and reports it beside the probes.

    Example: mitoprobe run
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    head_list = None if heads == "all" else [h.strip() for h in heads.split(",") if h.strip()]
    timings = run_main_job(store_path, data_dir, models or None, head_list, views, "none" if full else fmt)
    if full:
        from classifiers.cli import print_report

        timings.update(run_offline_full(store_path))
        print_report(Store(store_path), fmt)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    click.echo(f"main job done in {time.perf_counter() - t0:.0f} s ({parts})")
