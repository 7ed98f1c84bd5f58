"""``mitoprobe finetune``: LoRA or full fine-tuning under the paper's protocol (thin over ``finetune()``)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pandas as pd

import mitoprobe
from mitoprobe.classifiers.labels import MAX_NAME, family_label
from mitoprobe.classifiers.runs import LEGACY_FINETUNE_OPTIONS
from mitoprobe.finetune import FinetuneConfig, finetuned_recipe, runs_root
from mitoprobe.finetune import finetune as run_finetune
from mitoprobe.paper import REPO as PAPER_REPO
from mitoprobe.paper import SCRIPTS_AT
from mitoprobe.display import print_frame

from .options import STORE_OPTION


def _list_runs(store_path) -> None:
    rows = []
    root = runs_root(mitoprobe.open(store_path).store)
    for d in sorted(root.glob("*/config.json")) if root.is_dir() else []:
        conf = json.loads(d.read_text())
        done = sorted(int(p.parent.name[4:]) for p in d.parent.glob("fold*/DONE.json"))
        legacy = not conf["options"] and "paper_entry" not in conf  # stored before the per-model table
        label = family_label(dict(family="finetune", model=conf["model"], head=conf["head"], config_json=conf))
        rows.append(dict(run=conf["run_key"][:8], label=label, model=conf["model"], method=conf["head"],
                         options=LEGACY_FINETUNE_OPTIONS if legacy else json.dumps(conf["options"]), folds_done=",".join(map(str, done)) or "-",
                         embedders=" ".join(f"ft:{conf['run_key'][:8]}/fold{k}" for k in done)))
    print_frame(pd.DataFrame(rows, columns=["run", "label", "model", "method", "options", "folds_done", "embedders"]),
                title=f"fine-tuning runs in {root}")


def _floats(n: int):
    """A click callback parsing 'a,b[,...]' into a tuple of ``n`` floats (None when not given)."""

    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            out = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise click.BadParameter(f"{value!r}: give {n} comma-separated numbers") from None
        if len(out) != n:
            raise click.BadParameter(f"{value!r}: give {n} comma-separated numbers")
        return out

    return parse


def _show_paper(model: str, method: str) -> None:
    """The paper script's settings for MODEL and METHOD, each with its source line."""
    cfg = FinetuneConfig.paper(model, method)
    entry = cfg.paper_entry()
    rows = [dict(setting=name, value=json.dumps(getattr(cfg, name)), source=entry.source(name))
            for name in entry.settings]
    where = f"{PAPER_REPO}@{SCRIPTS_AT}: {entry.script}" if entry.script else "no script for this model"
    print_frame(pd.DataFrame(rows, columns=["setting", "value", "source"]),
                title=f"paper settings of {model} ({method}) -- {where}")
    for note in entry.notes:
        click.echo(f"note: {note}")


@click.command("finetune")
@click.option("--model", "-m", default=None, help="Backbone recipe (see `mitoprobe embed --list`), e.g. virchow2.hf.")
@click.option("--preset", type=click.Choice(["offline"]), default=None,
              help="Named settings instead of the paper's; offline = a small CNN from scratch on CPU (model optional).")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="lora: peft adapters + head (the paper's foundation models); full: every weight (its end-to-end baselines).")
@click.option("--show-paper", is_flag=True,
              help="Print the paper script's settings for --model/--method (value and script line each) and exit.")
@click.option("--folds", default=None, help="Folds to train: 0,1 (0-based) or 1..5 (1-based range). Default: all five.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Maximum epochs (paper: 100, with early stopping).")
@click.option("--early-stop", type=click.IntRange(min=1), default=None,
              help="Stop after N epochs without a better held-out score (paper: 10 LoRA, 15 end-to-end).")
@click.option("--max-steps", type=click.IntRange(min=0), default=None, help="At most N optimizer steps per epoch (smoke tests).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate (paper: 5e-5 in every script).")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="Adam weight decay (paper: 1e-5).")
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default=None, help="Optimizer (paper: adam).")
@click.option("--lr-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="ReduceLROnPlateau factor (paper: 0.5).")
@click.option("--lr-patience", type=click.IntRange(min=0), default=None, help="ReduceLROnPlateau patience (paper: 3).")
@click.option("--min-lr", type=click.FloatRange(min=0), default=None, help="Learning-rate floor (paper: 1e-7).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size (paper: 8).")
@click.option("--lora-r", type=click.IntRange(min=1), default=None, help="LoRA rank (paper: 8).")
@click.option("--lora-alpha", type=click.IntRange(min=1), default=None, help="LoRA alpha (paper: 16).")
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=None, help="LoRA dropout (paper: 0.3).")
@click.option("--lora-targets", default=None, metavar="A,B,...",
              callback=lambda ctx, param, v: tuple(t.strip() for t in v.split(",") if t.strip()) if v else None,
              help="Module names LoRA adapts (paper: qkv,proj,fc1,fc2).")
@click.option("--loss", type=click.Choice(["bce", "weighted_bce", "focal"]), default=None,
              help="bce (paper, with the weighted sampler); weighted_bce/focal replace the sampler by plain shuffling.")
@click.option("--focal-gamma", type=click.FloatRange(min=0), default=None, help="Focal loss gamma (with --loss focal; 2).")
@click.option("--sampler", type=click.Choice(["weighted", "shuffle"]), default=None,
              help="Default: weighted for bce, shuffle for the weighted losses.")
@click.option("--train-crop", type=click.Choice(["random", "none", "last"]), default=None,
              help="Training geometry: random = RandomResizedCrop first (LoRA scripts); none = the evaluation resize, "
                   "no crop (H-optimus-1, UNI2-h); last = resize first, RandomResizedCrop after the colour jitter "
                   "(end-to-end scripts).")
@click.option("--crop-from", type=click.Choice(["patch", "view"]), default=None,
              help="RandomResizedCrop on the raw 128 px patch (paper) or on the evaluation view.")
@click.option("--crop-scale", callback=_floats(2), default=None, metavar="MIN,MAX",
              help="RandomResizedCrop area scale (paper: 0.8,1 Virchow and end-to-end; 0.08,1 UNI, Prov-GigaPath, H-optimus-0).")
@click.option("--hflip/--no-hflip", default=None, help="Random horizontal flips (paper: on, except UNI2-h).")
@click.option("--rotate", "rotate_degrees", type=click.FloatRange(min=0), default=None, metavar="DEG",
              help="RandomRotation(DEG) (paper: 15 UNI/Prov-GigaPath/H-optimus, 10 end-to-end, 0 Virchow).")
@click.option("--color-jitter", callback=_floats(4), default=None, metavar="B,C,S,H",
              help="ColorJitter brightness,contrast,saturation,hue (paper: 0.2,0.2,0.2,0.1 Virchow and end-to-end; "
                   "0.2,0.2,0,0 UNI/Prov-GigaPath/H-optimus; 0,0,0,0 UNI2-h).")
@click.option("--dihedral", is_flag=True, default=None, help="Also augment with vertical flips and 90-degree rotations.")
@click.option("--hed", type=click.FloatRange(min=0), default=None, help="HED stain-jitter strength (e.g. 0.05; default off).")
@click.option("--norm", type=click.Choice(["half", "imagenet", "hoptimus", "recipe"]), default=None,
              help="Input normalisation: half = mean = std = 0.5 (paper: Virchow, Virchow2); imagenet (UNI, UNI2-h, "
                   "Prov-GigaPath, end-to-end); hoptimus = the H&E statistics (H-optimus); recipe = the embedder's.")
@click.option("--eval-resize", type=click.IntRange(min=0), default=None,
              help="Evaluation: resize the short side to N, then centre-crop the input size (paper: 224; 0 = the recipe's).")
@click.option("--eval-interpolation", type=click.Choice(["bilinear", "bicubic", "nearest", "lanczos"]), default=None,
              help="Evaluation resize interpolation (paper: bilinear, torchvision's default).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="Training autocast dtype on CUDA (paper: fp32, no autocast; auto = bf16). CPU trains in fp32 "
                   "unless the preset allows bf16 and the CPU has it natively.")
@click.option("--eval-precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="Evaluation autocast dtype on CUDA (paper: fp16 for H-optimus, fp32 otherwise; auto = the training one).")
@click.option("--cpu-bf16/--no-cpu-bf16", default=None,
              help="Allow bf16 autocast on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere fp32 regardless.")
@click.option("--tta", type=click.Choice(["none", "rot4", "d8"]), default=None,
              help="Test-time augmentation at inference: mean probability over 4 rotations or 8 dihedral views.")
@click.option("--threshold", type=click.Choice(["fixed_0.5", "val_youden"]), default=None,
              help="Decision threshold: 0.5 (paper) or the best balanced accuracy on the fold's held-out part.")
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), default=None,
              help="Learning-rate schedule: plateau (paper) or per-step cosine after a warm-up epoch.")
@click.option("--select-on", type=click.Choice(["balanced_accuracy", "auroc"]), default=None,
              help="Held-out score that selects the checkpoint (paper: balanced accuracy at 0.5).")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=None, help="Evaluate an EMA of the weights with this decay (e.g. 0.998).")
@click.option("--mixup", type=click.FloatRange(min=0), default=None, help="Mixup Beta(a, a) of training batches (e.g. 0.2).")
@click.option("--targets", type=click.Choice(["majority", "votes"]), default=None,
              help="Training targets: majority = the label (paper); votes = the fraction of experts who called "
                   "the figure atypical (a soft target; patches without votes keep their label).")
@click.option("--aux-subtypes", type=click.FloatRange(min=0), default=None, metavar="WEIGHT",
              help="Weight of an auxiliary loss on the experts' subtype calls (8 AMi-Br subtypes, a second head on "
                   "the same features; training patches only; 0 = off).")
@click.option("--batch-augment/--sample-augment", default=None,
              help="Augment whole batches from patches decoded once (fast on CPU; the offline preset's default) "
                   "or each patch in DataLoader workers (paper).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed of sampling, augmentation, dropout and the head.")
@click.option("--train-on", default=None, metavar="DATASET",
              help="Train on this dataset's split=train patches (5 slide-grouped folds; a lab's cohort) instead of the "
                   "paper's AMi-Br training split; recorded in the run (a different run and family).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--allow-cpu", is_flag=True, help="Fine-tune a large model (> 30M parameters) on CPU anyway.")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="PNG-decoding DataLoader workers (default: min(8, cores - 1) on CUDA, as the scripts' 8; 0 on CPU).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Torch CPU threads (default: torch's). On a shared CPU, 1 thread + 1 worker is often fastest.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Run folder (default: <store>/finetune/<run key>).")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Local base weights replacing the hub download (as for `mitoprobe embed`).")
@click.option("--hf-token-env", default="HF_TOKEN", show_default=True, help="Variable holding the Hugging Face token.")
@click.option("--register-embedder", is_flag=True,
              help="Afterwards, print the embedder name of each finished fold (embed it with `mitoprobe embed --model`).")
@click.option("--name", default=None, metavar="LABEL",
              help=f"A short label for this run in the report, --compare and the dashboard (at most {MAX_NAME} "
                   "characters; default: ft MODEL METHOD RUN8). Recorded in the new run's config.json; a run already "
                   "started keeps its own.")
@click.option("--list", "list_", is_flag=True, help="List the fine-tuning runs in the store and their finished folds.")
@STORE_OPTION
def finetune_cmd(model, preset, method, show_paper, folds, epochs, max_steps, device, allow_cpu, num_workers, threads,
                 out, weights, hf_token_env, register_embedder, name, list_, store_path, **settings) -> None:
    """Fine-tune MODEL (LoRA or fully) per fold and add its rows to the leaderboard (resumable).

    By default the settings of the paper's script for MODEL (its normalisation, augmentation, evaluation
    geometry, early stopping and precision: --show-paper lists them with their script lines); every other
    option is recorded in the run's config and shown as its options.

    \b
    Example: mitoprobe finetune --model uni.hf --method lora --folds 0
    Example: mitoprobe finetune --model hoptimus1.hf --show-paper
    Example (no downloads, CPU): mitoprobe finetune --preset offline
    """
    if list_:
        _list_runs(store_path)
        return
    if model is None and preset is None:
        raise click.UsageError("pass --model NAME or --preset offline (or --list)")
    if show_paper:
        _show_paper(model or FinetuneConfig.preset(preset).model, method)
        return
    if threads:
        import torch

        torch.set_num_threads(threads)

    if settings["sampler"] is None and settings["loss"] in ("weighted_bce", "focal"):
        settings["sampler"] = "shuffle"
    settings.update(max_epochs=epochs, max_steps=max_steps)
    if preset:
        cfg = FinetuneConfig.preset(preset, model=model, **settings)
    else:
        cfg = FinetuneConfig.paper(model, method, **settings)
    s = run_finetune(mitoprobe.open(store_path).store, cfg, folds, device=device, allow_cpu=allow_cpu, out=out,
                     num_workers=num_workers, weights=weights, hf_token_env=hf_token_env, name=name)
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
