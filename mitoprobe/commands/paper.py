"""``mitoprobe paper plan|run``: the paper's whole comparison as one resumable plan (``finetune.plan``)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

import mitoprobe
from mitoprobe.display import print_frame
from mitoprobe.finetune.paper_run import run_plan
from mitoprobe.finetune.plan import paper_plan

from .options import STORE_OPTION


def _plan_options(fn):
    """The options that choose what is planned (shared by ``plan`` and ``run``, so both see the same jobs)."""
    opts = [
        click.option("--models", default=None, metavar="A,B",
                     help="The paper's models to include (default: all 10: virchow, virchow2, uni, uni2_h, gigapath, "
                          "hoptimus0, hoptimus1, efficientnetv2_m, swin_base, vit_large)."),
        click.option("--random", "random_", is_flag=True,
                     help="Dry run: the random-weight twins (<model>.random) instead of the real weights."),
        click.option("--weights", "weights_dir", type=click.Path(path_type=Path), default=None,
                     help="A folder of local weights files named <model>.safetensors (or <recipe>.safetensors); "
                          "models without one use the hub ($HF_TOKEN)."),
        click.option("--gpu-check", type=click.Path(path_type=Path), default=None,
                     help="A gpu_check.json measured on the machine that will run the plan "
                          "(`python -m benchmarks.gpu_check`): estimates from it instead of FLOP counts."),
        click.option("--gpu", type=click.Choice(["h100", "h200"]), default="h100",
                     help="The card the FLOP-based estimates assume."),
        click.option("--folds", default=None, metavar="0,1",
                     help="Only these folds (default: all five, as the paper)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None,
                     help="Cap every fold's epochs (a smoke run; not the paper's settings, and the verdict says so)."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None,
                     help="Cap optimizer steps per epoch (a smoke run, as --epochs)."),
        click.option("--hf-token-env", default="HF_TOKEN", show_default=True,
                     help="Environment variable holding the Hugging Face token."),
        STORE_OPTION,
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _plan(ws, models, random_, weights_dir, gpu_check, gpu, folds, epochs, max_steps, hf_token_env):
    settings = {k: v for k, v in (("max_epochs", epochs), ("max_steps", max_steps)) if v is not None}
    try:
        fold_list = [int(k) for k in folds.split(",")] if folds else None
    except ValueError:
        raise click.BadParameter(f"{folds!r}: a comma list of fold numbers, e.g. 0,1", param_hint="--folds") from None
    return paper_plan(ws.store, models=models, random=random_, weights_dir=weights_dir, gpu_check=gpu_check, gpu=gpu,
                         settings=settings or None, folds=fold_list, hf_token_env=hf_token_env)


def _show(plan, all_jobs: bool = True) -> None:
    frame = plan.frame()
    if not all_jobs:
        frame = frame[frame["state"] != "done"]
    frame = frame.drop(columns=["model"]).astype(object)
    print_frame(frame.where(frame.notna(), ""), title=f"the paper's plan -- estimates: {plan.estimate_source}",
                floatfmt="{:.2f}")
    t = plan.totals()
    walls = ", ".join(f"{h:.1f} h on {n} GPU{'s' if n > 1 else ''}" for n, h in t["wall_hours"].items())
    click.echo(f"{t['to_do']} of {t['jobs']} jobs to do: {t['gpu_hours']:.1f} GPU hours ({walls}; at most "
               f"{t['gpu_hours_bound']:.1f} GPU hours if no fold stopped early); peak GPU memory "
               f"{t['peak_gib']:.0f} GiB; checkpoints {t['disk_kept_gib']:.1f} GiB kept "
               f"({t['disk_peak_gib']:.1f} GiB at most while folds train)")
    for stem, why in plan.skipped.items():
        click.echo(f"left out {stem}: {why}", err=True)


@click.group("paper")
def paper_group() -> None:
    """Reproduce the paper's comparison: plan it, run it (resumable; --engine ray across GPUs), then
    `mitoprobe report --paper` for the verdict table."""


@paper_group.command("plan")
@_plan_options
def plan_cmd(store_path, **opts) -> None:
    """List every job of the paper's grid with its state in the store (done / partial -- which epoch -- / to do),
    its estimated GPU time, peak GPU memory and checkpoint disk. Writes nothing.

    \b
    Example: mitoprobe paper plan --random
    Example: mitoprobe paper plan --weights /models --gpu-check gpu_check.json
    """
    with mitoprobe.open(store_path, read_only=True) as ws:
        _show(_plan(ws, **opts))


@paper_group.command("run")
@_plan_options
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one job after another here; ray: each (model, fold) fine-tuning job a Ray task on one GPU "
                   "(RAY_ADDRESS or --ray-address; the store on a file system every node mounts).")
@click.option("--ray-address", default=None, help="The Ray cluster to join (default: RAY_ADDRESS, else a local one).")
@click.option("--device", default="auto", show_default=True, help="cuda, cpu or auto.")
@click.option("--n-boot", type=click.IntRange(min=0), default=None, help="Bootstrap resamples per CI (default 1000).")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Ray: how often a job lost with its node is started again elsewhere (it resumes there).")
def run_cmd(store_path, engine, ray_address, device, n_boot, max_retries, **opts) -> None:
    """Run every job of the plan that is not done: embeddings, probes, then the fine-tuning folds, longest first.
    Stopped or killed, run it again: it goes on from what the store holds (a fold from its last saved epoch).

    \b
    Example: mitoprobe paper run
    Example: RAY_ADDRESS=auto mitoprobe paper run --engine ray --store /shared/mitoprobe-store
    """
    with mitoprobe.open(store_path) as ws:
        plan = _plan(ws, **opts)
        _show(plan, all_jobs=False)
        report = run_plan(ws.store, plan, engine=engine, device=device, n_boot=n_boot, max_retries=max_retries,
                              ray_address=ray_address, echo=click.echo)
        left = report.after.todo() if report.after else []
        click.echo(f"{len(report.done)} jobs done, {len(report.failed)} failed in {report.seconds / 60:.1f} min; "
                   f"{len(left)} left. The verdict: mitoprobe report --paper")
        for key, why in report.failed.items():
            click.echo(f"failed {key}: {why}", err=True)
    if report.failed:
        sys.exit(1)
