"""GPU check of the paper's 10 models at real size with random weights (<= 8 min on one H100/H200).

What, per model (each in its own try/except: an OOM is recorded and the rest still run):

1. ``embed``: embedding throughput of the 7 foundation models (Virchow, Virchow2, UNI, UNI2-h,
   Prov-GigaPath, H-optimus-0/1) at the recipe's precision (fp16 autocast, fp32 for Prov-GigaPath),
   batch 256 of synthetic inputs already on the GPU, through the embedding job's own forward pass
   (``embedder.batches.forward_views``): images/s and peak GPU memory.
2. ``lora`` / ``full``: training steps of the paper's configuration (``FinetuneConfig.paper``):
   LoRA for the 7 foundation models, full fine-tuning for the 3 end-to-end baselines (EfficientNetV2-M,
   Swin-B, ViT-L/16), batch 8, fp32 as the paper trains, BCE, Adam over the trainable parameters,
   channels-last for the CNN, cudnn.benchmark, on synthetic inputs already on the GPU: ms per step,
   images/s, peak GPU memory.
3. ``fed``: the same training step (same model, optimizer and loss) fed by the paper's per-sample
   training transform of that model (``train_transform``) over real 128 px PNG patches in the training
   DataLoader (``train_loader``: W persistent workers, pinned memory, each batch copied to the GPU as
   ``finetune.train`` does): images/s while training runs. ``input_bound`` is true when the fed rate is
   below 0.9x the synthetic step's (``INPUT_BOUND``): the GPU waits for the CPU's decoding and augmentation.

Why: the fine-tuning and embedding jobs were sized on CPUs; this measures, in one short run on the
first GPU lent, what a real-size run of every model costs (time, memory) and whether 8 loader
workers keep a GPU busy at the paper's batch 8 while they share the machine with the training step.

JSON keys (read by ``finetune.estimate``): ``models[stem][<method>]`` has ``step_ms``, ``images_per_s``,
``peak_gpu_gib``; ``models[stem]["embed"]`` has ``images_per_s``, ``peak_gpu_gib``; ``models[stem]["fed"]``
has ``images_per_s``; each phase has ``steps`` (timed steps done) and ``cut``, or ``error``.

Big models are built directly on the GPU (``with torch.device(device)``), not initialised on the CPU.
It reads PNG files (``--patches``) and writes exactly one file: the JSON (``--out``; default
``$OUT/gpu_check.json`` when $OUT is set, else ``gpu_check.json`` in the working directory), rewritten
after each model so a run cut short still leaves its figures. ``--time-budget`` holds inside each phase:
every timed loop stops at it (after at least one timed step; ``"cut": true``), and no model starts after it
but the first (the skipped ones are listed), so a slow model cannot overrun the device time.

``--device cpu`` is a dry run: tiny stand-ins of every architecture (``TINY``) at 32 px, so that
every code path runs in seconds; its figures mean nothing (tests/test_gpu_check.py runs it).

On a lent device machine ``../shared`` does not travel: copy a few hundred patches into a folder that
``.git/info/exclude`` ignores, carry it and pass ``--patches``; without them the loader reads synthetic PNGs.

Example: python -m benchmarks.gpu_check
         python -m benchmarks.gpu_check --only virchow2,gigapath --steps 50
         python -m benchmarks.gpu_check --patches .gpu_patches --time-budget 300
         python -m benchmarks.gpu_check --device cpu --threads 1 --workers 1 --n-patches 16   # dry run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mitoprobe import embedder
from mitoprobe.embedder.batches import autocast_dtype, forward_views
from mitoprobe.embedder.recipes import random_twin
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.augment import train_transform
from mitoprobe.finetune.data import train_loader
from mitoprobe.finetune.model import build_classifier, parameter_counts
from mitoprobe.finetune.precision import autocast, training_precision
from mitoprobe.finetune.train import loss_fn, make_optimizer
from mitoprobe.paper import END_TO_END, FOUNDATION  # the paper's models: LoRA-tuned / fully fine-tuned

from .machine import facts, header

REPO = Path(__file__).resolve().parents[1]

MODELS = FOUNDATION + END_TO_END
DEFAULT_PATCHES = REPO.parent / "shared/datasets/AMi-Br_Benchmark/AMi-Br"

# Dry run (--device cpu): tiny stand-ins that keep each architecture's special parts (SwiGLU-packed MLPs:
# int(32 * 5.33) = 170 hidden units, even as GluMlp needs; register tokens; no_embed_class) at 32 px.
TINY_SIZE = 32
TINY_VIT = dict(img_size=TINY_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2)
TINY = {"efficientnetv2_m": dict(channel_multiplier=0.25, depth_multiplier=0.1),  # timm's own width/depth scaling
        "swin_base": dict(img_size=TINY_SIZE, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                          window_size=2)}


def tiny_overrides(stem: str) -> dict:
    return TINY.get(stem, TINY_VIT)


def method_of(stem: str) -> str:
    return "lora" if stem in FOUNDATION else "full"


def recipe_name(stem: str) -> str:
    """The random-weight recipe of ``stem`` (``embedder.recipes.random_twin``: for Swin-B and ViT-L, which have hub
    weights only, a copy of ``<stem>.hf`` registered in this process)."""
    return random_twin(stem).name


def paper_config(stem: str, dry: bool) -> FinetuneConfig:
    """The paper's script for this model (``finetune.paper``); the dry run evaluates at the tiny size."""
    cfg = FinetuneConfig.paper(recipe_name(stem), method_of(stem))
    return cfg.with_(eval_resize=0) if dry else cfg


def recipe_for(stem: str, dry: bool):
    """The recipe (the dry run's at the tiny input size: its transforms and synthetic inputs follow)."""
    recipe = embedder.get_recipe(recipe_name(stem))
    return replace(recipe, input_size=TINY_SIZE, resize=TINY_SIZE) if dry else recipe


# -- GPU bookkeeping ----------------------------------------------------------------------------------

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    """Give back what the last phase held and start the next peak from zero."""
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


def _memory(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return dict(peak_gpu_gib=None, allocated_gpu_gib=None)
    return dict(peak_gpu_gib=_gib(torch.cuda.max_memory_allocated()),
                allocated_gpu_gib=_gib(torch.cuda.memory_allocated()))


def run_phase(fn, *args, **kwargs) -> dict:
    """``fn``'s figures, or ``{"error": ...}``: one model's failure (an OOM, say) never stops the others.
    Returning from here drops the exception's frames, so ``_free`` afterwards gets the memory back."""
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # OOM, a timm/peft error, a worker crash: recorded, the run goes on
        out = dict(error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    out["phase_s"] = round(time.perf_counter() - t0, 2)
    return out


# -- the measurements ------------------------------------------------------------------------------------

def timed_loop(step, warmup: int, steps: int, device: str, deadline: float) -> tuple[int, float, bool]:
    """``warmup`` untimed calls of ``step()``, then up to ``steps`` timed ones; both stop at ``deadline``
    (``time.perf_counter`` seconds), the timed ones after at least one call, so a slow model stops early
    with a figure instead of overrunning the run's budget. Returns (timed calls, their seconds, cut short)."""
    warm = 0
    while warm < warmup and time.perf_counter() < deadline:
        step()
        warm += 1
    _sync(device)
    t0, done = time.perf_counter(), 0
    while done < steps and (done == 0 or time.perf_counter() < deadline):
        step()
        done += 1
    _sync(device)
    return done, time.perf_counter() - t0, warm < warmup or done < steps


def embed_throughput(stem: str, device: str, batch: int, warmup: int, steps: int, dry: bool, deadline: float) -> dict:
    """Images/s of the recipe's forward pass (the embedding job's own, at the recipe's precision)."""
    import torch

    recipe = recipe_for(stem, dry)
    t0 = time.perf_counter()
    with torch.device(device):  # weights initialised on the GPU: seconds, not minutes, for 1B parameters
        model, _ = embedder.build(recipe, overrides=tiny_overrides(stem) if dry else None)
    _sync(device)
    build_s = time.perf_counter() - t0
    dtype = autocast_dtype(recipe, device)
    x = torch.randn(batch, 3, recipe.input_size, recipe.input_size, device=device)
    # each call ends in .cpu(): synchronised per batch, as the job
    done, secs, cut = timed_loop(lambda: forward_views(model, x, ("none",), device, dtype), warmup, steps, device,
                                 deadline)
    return dict(recipe=recipe.name, precision=recipe.precision if dtype is not None else "fp32", batch=batch,
                steps=done, cut=cut, images_per_s=round(batch * done / secs, 1), build_s=round(build_s, 2),
                **_memory(device))


def train_step(stem: str, device: str, batch: int, warmup: int, steps: int, dry: bool, deadline: float,
               feed: dict) -> dict:
    """Ms per optimizer step of the paper's configuration (LoRA or full) on synthetic inputs already on the
    device, as ``finetune.train`` steps; then, on the same model, the step fed by the paper's loader
    (``fed_throughput`` with ``feed``'s arguments), under ``"fed"``."""
    import torch

    cfg = paper_config(stem, dry).with_(batch_size=batch)
    t0 = time.perf_counter()
    with torch.device(device):
        model, recipe = build_classifier(cfg, overrides=tiny_overrides(stem) if dry else None)
    model.to(device)
    _sync(device)
    build_s = time.perf_counter() - t0
    size = TINY_SIZE if dry else recipe.input_size
    on_gpu = device.startswith("cuda")
    channels_last = on_gpu and not recipe.is_vit and not recipe.arch.startswith("swin")  # the CNN, as train.py
    if channels_last:
        model.to(memory_format=torch.channels_last)
    precision = training_precision(device, cfg.cpu_bf16, cfg.precision)
    y_all = np.arange(batch) % 2  # both classes: loss_fn's class counts
    crit = loss_fn(cfg, y_all)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.as_tensor(y_all, dtype=torch.float32, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    last: dict = {}

    def step(x, y):
        with autocast(device, precision):
            logits = model(x)
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last["loss"] = loss.detach()

    done, secs, cut = timed_loop(lambda: step(x, y), warmup, steps, device, deadline)
    counts = parameter_counts(model)
    out = dict(recipe=cfg.model, method=cfg.method, precision=precision, batch=batch, steps=done, cut=cut,
               step_ms=round(1000 * secs / done, 2), images_per_s=round(batch * done / secs, 1),
               params_total=counts["total"], params_trainable=counts["trainable"], loss=float(last["loss"]),
               build_s=round(build_s, 2), channels_last=channels_last, **_memory(device))
    out["fed"] = run_phase(fed_throughput, step, channels_last, stem, device, batch, dry, deadline, **feed)
    return out


def fed_throughput(step, channels_last: bool, stem: str, device: str, batch: int, dry: bool, deadline: float,
                   pngs: list[bytes], labels: np.ndarray, workers: int, samples: int) -> dict:
    """Images/s of the training ``step`` fed by the paper's per-sample training transform (``train_transform``)
    in the training DataLoader (``train_loader``: W persistent workers, pinned memory on GPU), each batch
    copied to the device as ``finetune.train`` does. Each worker's first batch (its start-up) is not timed."""
    import torch

    cfg = paper_config(stem, dry)
    recipe = recipe_for(stem, dry)
    tf = train_transform(recipe, eval_preprocess=cfg.eval_preprocess(recipe), crop_from=cfg.crop_from,
                         **cfg.augment_kwargs())
    on_gpu = device.startswith("cuda")
    loader = train_loader(pngs, labels, tf, batch, cfg.sampler, 0, workers, on_gpu, num_samples=samples)
    skip = max(1, workers)
    n, t0, cut = 0, None, False
    for i, (x, y) in enumerate(loader):
        if i == skip:
            _sync(device)
            t0, n = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        step(x, y)
        n += len(x)
        if t0 is not None and i + 1 < len(loader) and time.perf_counter() >= deadline:
            cut = True
            break
    _sync(device)
    if t0 is None:  # fewer batches than workers: time nothing rather than start-up
        raise ValueError(f"--loader-samples {samples} gives no batch after the {skip} start-up batches")
    secs = time.perf_counter() - t0
    return dict(batch=batch, workers=workers, pin_memory=on_gpu, images=n, cut=cut, input_size=recipe.input_size,
                train_crop=cfg.train_crop, images_per_s=round(n / secs, 1))


# -- patches ---------------------------------------------------------------------------------------------

def synthetic_pngs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` random 128 px RGB PNGs (where no real patches are at hand)."""
    from mitoprobe.store.example_benchmark import png_bytes

    rng = np.random.default_rng(seed)
    return [png_bytes(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)) for _ in range(n)]


def load_patches(folder: Path, n: int) -> tuple[list[bytes], np.ndarray, str]:
    """The first ``n`` PNGs under ``folder`` (recursive, sorted; label 1 under an ``Atypical`` folder), else
    ``n`` synthetic 128 px PNGs. Returns the bytes, the 0/1 labels (both classes present) and the source."""
    files = sorted(folder.rglob("*.png"))[:n] if folder.is_dir() else []
    if files:
        pngs = [f.read_bytes() for f in files]
        labels = np.array([int("Atypical" in f.parts) for f in files])
        source = f"{len(files)} PNGs from {folder}"
    else:
        pngs = synthetic_pngs(n)
        labels = np.zeros(n, dtype=np.int64)
        source = f"{n} synthetic 128 px PNGs ({folder} not found)"
    if labels.min() == labels.max():  # the weighted sampler wants both classes; label figures are irrelevant here
        labels = np.arange(len(pngs)) % 2
    return pngs, labels, source


# -- the run ---------------------------------------------------------------------------------------------

INPUT_BOUND = 0.9  # fed images/s below this fraction of the synthetic step's: the GPU waits for the loader


def check_model(stem: str, a, device: str, dry: bool, pngs, labels, deadline: float) -> dict:
    """One model's phases (embedding for the foundation models, its paper training step, the step fed by its
    loader), each stopping its timed loop at ``deadline``."""
    t0 = time.perf_counter()
    method = method_of(stem)
    entry: dict = dict(stem=stem, recipe=recipe_name(stem), method=method)
    if stem in FOUNDATION:
        entry["embed"] = run_phase(embed_throughput, stem, device, a.embed_batch, a.warmup, a.embed_steps, dry,
                                   deadline)
        _free(device)
    feed = dict(pngs=pngs, labels=labels, workers=a.workers, samples=a.loader_samples)
    entry[method] = run_phase(train_step, stem, device, a.batch, a.warmup, a.steps, dry, deadline, feed)
    entry["fed"] = entry[method].pop("fed", dict(error="not measured: the training step failed"))
    _free(device)
    step_ips, fed_ips = entry[method].get("images_per_s"), entry["fed"].get("images_per_s")
    if step_ips and fed_ips:
        entry["fed_over_step"] = round(fed_ips / step_ips, 2)
        entry["input_bound"] = fed_ips < INPUT_BOUND * step_ips
    entry["wall_s"] = round(time.perf_counter() - t0, 1)
    return entry


def environment(device: str) -> dict:
    """The machine (``machine.facts``: CPU, torch, GPU, CUDA, driver, load) and what else these figures hang on."""
    import timm
    import torch

    on_gpu = device.startswith("cuda")
    return dict(facts(), device=device, timm=timm.__version__, cudnn=torch.backends.cudnn.version() if on_gpu else None,
                matmul_tf32=torch.backends.cuda.matmul.allow_tf32)


def _millions(n: int) -> str:
    return f"{n / 1e6:.3g}M"


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(report: dict) -> str:
    env = report["environment"]
    dry = "CPU dry run (tiny models: no figures) | " if report["dry_run"] else ""
    lines = [f"{dry}{header(env)} | timm {env['timm']} | loader: {report['settings']['workers']} workers, "
             f"{report['patches']}",
             "| model | embed img/s | embed peak GiB | method | step ms | step img/s | step peak GiB "
             "| trainable / total | fed img/s | input-bound |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    failures, cut = [], False
    for e in report["models"].values():
        emb, st, fed = e.get("embed", {}), e[e["method"]], e["fed"]
        params = (f"{_millions(st['params_trainable'])} / {_millions(st['params_total'])}"
                  if "params_total" in st else "-")
        bound = {True: "yes", False: "no"}.get(e.get("input_bound"), "-")
        mark = {phase: "*" if e.get(phase, {}).get("cut") else "" for phase in ("embed", e["method"], "fed")}
        cut = cut or any(mark.values())
        lines.append(f"| {e['stem']} | {_fmt(emb.get('images_per_s'))}{mark['embed']} | "
                     f"{_fmt(emb.get('peak_gpu_gib'), '.2f')} | {e['method']} | {_fmt(st.get('step_ms'))}"
                     f"{mark[e['method']]} | {_fmt(st.get('images_per_s'))}{mark[e['method']]} | "
                     f"{_fmt(st.get('peak_gpu_gib'), '.2f')} | {params} | {_fmt(fed.get('images_per_s'))}{mark['fed']} "
                     f"| {bound} |")
        for phase in ("embed", e["method"], "fed"):
            if "error" in e.get(phase, {}):
                failures.append(f"{e['stem']} {phase} failed: {e[phase]['error']}")
    if cut:
        lines.append("* cut short by the time budget: fewer steps than asked")
    lines += failures
    if report["skipped"]:
        budget = report["settings"]["time_budget"]
        lines.append(f"skipped (time budget {budget} s spent): {', '.join(report['skipped'])}")
    lines.append(f"wall {report['wall_s']:.0f} s")
    return "\n".join(lines)


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run with tiny models)")
    ap.add_argument("--only", default="", help=f"comma list of models (default all: {','.join(MODELS)})")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps (and embedding batches) first")
    ap.add_argument("--batch", type=int, default=8, help="training batch (the paper's 8)")
    ap.add_argument("--embed-batch", type=int, default=256)
    ap.add_argument("--embed-steps", type=int, default=6, help="timed embedding batches per model")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers")
    ap.add_argument("--patches", type=Path, default=DEFAULT_PATCHES, help="folder of 128 px PNG patches (recursive)")
    ap.add_argument("--n-patches", type=int, default=512, help="patches read from --patches")
    ap.add_argument("--loader-samples", type=int, default=512,
                    help="images the loader feeds to the training step per model (the fed measurement)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--time-budget", type=float, default=420.0,
                    help="seconds; timed loops stop at it and no new model starts after it (the first always does)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default $OUT/gpu_check.json or ./gpu_check.json)")
    a = ap.parse_args(argv)
    a.only = [s.strip() for s in a.only.split(",") if s.strip()] or list(MODELS)
    unknown = sorted(set(a.only) - set(MODELS))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {','.join(MODELS)}")
    a.out = a.out or default_out()
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    dry = a.device == "cpu"
    if not dry and not torch.cuda.is_available():
        print("no CUDA device; --device cpu is a dry run with tiny models", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    if not dry:
        torch.backends.cudnn.benchmark = True  # fixed input sizes, as the training job sets it
    start = time.perf_counter()
    pngs, labels, source = load_patches(a.patches, a.n_patches)
    report = dict(environment=environment(a.device), dry_run=dry, patches=source,
                  settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                  models={}, skipped=[], wall_s=0.0)
    print(table(report).splitlines()[0], flush=True)
    _free(a.device)
    deadline = start + a.time_budget
    for stem in a.only:
        if report["models"] and time.perf_counter() >= deadline:
            report["skipped"].append(stem)
            continue
        entry = check_model(stem, a, a.device, dry, pngs, labels, deadline)
        _free(a.device)
        report["models"][stem] = entry
        report["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(entry), flush=True)
        write_json(a.out, report)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    write_json(a.out, report)
    print(table(report), flush=True)
    print(f"wrote {a.out}", flush=True)
    return 0


def write_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
