"""``mitoprobe finetune``: LoRA or full fine-tuning under the paper's protocol (thin over ``finetune()``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

import pandas as pd

from finetune import FinetuneConfig, finetuned_recipe, runs_root
from finetune import finetune as run_finetune
from mitoprobe.display import print_frame
from store import Store

from .options import STORE_OPTION


def _list_runs(store_path) -> None:
    rows = []
    root = runs_root(Store(store_path))
    for d in sorted(root.glob("*/config.json")) if root.is_dir() else []:
        conf = json.loads(d.read_text())
        done = sorted(int(p.parent.name[4:]) for p in d.parent.glob("fold*/DONE.json"))
        rows.append(dict(run=conf["run_key"][:8], model=conf["model"], method=conf["head"],
                         options=json.dumps(conf["options"]), folds_done=",".join(map(str, done)) or "-",
                         embedders=" ".join(f"ft:{conf['run_key'][:8]}/fold{k}" for k in done)))
    print_frame(pd.DataFrame(rows, columns=["run", "model", "method", "options", "folds_done", "embedders"]),
                title=f"fine-tuning runs in {root}")


@click.command("finetune")
@click.option("--model", "-m", default=None, help="Backbone recipe (see `mitoprobe embed --list`), e.g. virchow2.hf.")
@click.option("--preset", type=click.Choice(["offline"]), default=None,
              help="Named settings instead of the paper's; offline = a small CNN from scratch on CPU (model optional).")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="lora: peft adapters + head (the paper's foundation models); full: every weight (its end-to-end baselines).")
@click.option("--folds", default=None, help="Folds to train: 0,1 (0-based) or 1..5 (1-based range). Default: all five.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (paper: 100, with early stopping).")
@click.option("--max-steps", type=click.IntRange(min=0), default=None, help="At most N optimizer steps per epoch (smoke tests).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate (paper: 5e-5 LoRA, 1e-4 full).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size (paper: 8).")
@click.option("--loss", type=click.Choice(["bce", "weighted_bce", "focal"]), default=None,
              help="bce (paper, with the weighted sampler); weighted_bce/focal replace the sampler by plain shuffling.")
@click.option("--sampler", type=click.Choice(["weighted", "shuffle"]), default=None,
              help="Default: weighted for bce, shuffle for the weighted losses.")
@click.option("--dihedral", is_flag=True, default=None, help="Also augment with vertical flips and 90-degree rotations.")
@click.option("--hed", type=click.FloatRange(min=0), default=None, help="HED stain-jitter strength (e.g. 0.05; default off).")
@click.option("--tta", type=click.Choice(["none", "rot4", "d8"]), default=None,
              help="Test-time augmentation at inference: mean probability over 4 rotations or 8 dihedral views.")
@click.option("--threshold", type=click.Choice(["fixed_0.5", "val_youden"]), default=None,
              help="Decision threshold: 0.5 (paper) or the best balanced accuracy on the fold's held-out part.")
@click.option("--norm", type=click.Choice(["paper", "recipe"]), default=None,
              help="Input normalisation: paper = mean = std = 0.5 (LoRA default); recipe = the model's own (full default).")
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), default=None,
              help="Learning-rate schedule: plateau (paper) or per-step cosine after a warm-up epoch.")
@click.option("--select-on", type=click.Choice(["balanced_accuracy", "auroc"]), default=None,
              help="Held-out score that selects the checkpoint (paper: balanced accuracy at 0.5).")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=None, help="Evaluate an EMA of the weights with this decay (e.g. 0.998).")
@click.option("--mixup", type=click.FloatRange(min=0), default=None, help="Mixup Beta(a, a) of training batches (e.g. 0.2).")
@click.option("--targets", type=click.Choice(["majority", "votes"]), default=None,
              help="Training targets: majority = the label (paper); votes = the fraction of experts who called "
                   "the figure atypical (a soft target; patches without votes keep their label).")
@click.option("--batch-augment/--sample-augment", default=None,
              help="Augment whole batches from patches decoded once (fast on CPU; the offline preset's default) "
                   "or each patch in DataLoader workers (paper).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of sampling, augmentation, dropout and the head.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--allow-cpu", is_flag=True, help="Fine-tune a large model (> 30M parameters) on CPU anyway.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True, help="PNG-decoding DataLoader workers.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: torch's). On a shared CPU, 1 thread + 1 worker is often fastest.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run folder (default: <store>/finetune/<run key>).")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Local base weights replacing the hub download (as for `mitoprobe embed`).")
@click.option("--hf-token-env", default="HF_TOKEN", show_default=True, help="Variable holding the Hugging Face token.")
@click.option("--register-embedder", is_flag=True,
              help="Afterwards, print the embedder name of each finished fold (embed it with `mitoprobe embed --model`).")
@click.option("--list", "list_", is_flag=True, help="List the fine-tuning runs in the store and their finished folds.")
@STORE_OPTION
def finetune_cmd(model, preset, method, folds, epochs, max_steps, lr, batch_size, loss, sampler, dihedral, hed, tta,
             threshold, norm, schedule, select_on, ema, mixup, targets, batch_augment, seed, device, allow_cpu, num_workers, threads, out,
             weights, hf_token_env, register_embedder, list_, store_path) -> None:
    """Fine-tune MODEL (LoRA or fully) per fold and add its rows to the leaderboard (resumable).

    Paper settings by default; every other option is recorded in the run's config and options.

    Example: mitoprobe finetune --model virchow2.hf --method lora --folds 0
    Example (no downloads, CPU): mitoprobe finetune --preset offline
    """
    if list_:
        _list_runs(store_path)
        return
    if model is None and preset is None:
        raise click.UsageError("pass --model NAME or --preset offline (or --list)")
    if threads:
        import torch

        torch.set_num_threads(threads)

    if sampler is None and loss in ("weighted_bce", "focal"):
        sampler = "shuffle"
    opts = dict(schedule=schedule, select_on=select_on, ema=ema, mixup=mixup, targets=targets,
                batch_augment=batch_augment)
    if preset:
        cfg = FinetuneConfig.preset(preset, model=model, max_epochs=epochs, max_steps=max_steps, lr=lr,
                                    batch_size=batch_size, loss=loss, sampler=sampler, dihedral=dihedral, hed=hed,
                                    tta=tta, threshold=threshold, norm=norm, seed=seed, **opts)
    else:
        cfg = FinetuneConfig.paper(model, method, **opts, max_epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                               loss=loss, sampler=sampler, dihedral=dihedral, hed=hed, tta=tta, threshold=threshold,
                               norm=norm, seed=seed)
    s = run_finetune(store_path, cfg, folds, device=device, allow_cpu=allow_cpu, out=out, num_workers=num_workers,
            weights=weights, hf_token_env=hf_token_env)
    for k, rec in sorted(s.records.items()):
        click.echo(f"fold {k}: best epoch {rec['best_epoch']}/{rec['epochs']}, held-out balanced accuracy "
                   f"{rec['val_balanced_accuracy']:.3f}, AUROC {rec['val_auroc']:.3f}, "
                   f"{rec['images_per_s']:.1f} img/s on {rec['device']}")
    click.echo(f"run {s.run_key[:8]} in {s.run_dir}: folds done {s.folds_done}, {s.rows_appended} result rows added"
               + (" (with the fold ensemble)" if s.ensemble else "") + "; see `mitoprobe report`")
    if register_embedder:
        for k in s.folds_done:
            r = finetuned_recipe(store_path, f"ft:{s.run_key[:8]}/fold{k}", run_dir=s.run_dir)
            click.echo(f"embedder {r.name} (fold {k} only): mitoprobe embed --model ft:{s.run_key[:8]}/fold{k}")
