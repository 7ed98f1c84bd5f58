"""What a job of the paper's grid costs on a GPU: time, peak memory, checkpoint disk.

Two sources, the first that applies:

1. **measured** -- a ``gpu_check.json`` written by ``python -m benchmarks.gpu_check`` on the machine that will
   run the plan: training images/s of the paper's step (``<method>.images_per_s``; the loader-fed rate when it
   was measured and is lower), the forward pass's images/s (``embed.images_per_s``) and peak GPU memory.
2. **FLOP-based** -- the architecture's forward FLOPs per image counted by ``torch.utils.flop_counter`` on the
   meta device (no weights, no memory), training = 3x forward (full) or 2x (LoRA: input gradients through the
   frozen layers, none for their weights), divided by ``ACHIEVED`` x the card's dense peak (``GPUS``) at the
   job's precision. Peak memory: weights (+ gradients and Adam's two moments for full fine-tuning, of the
   adapters for LoRA) + every module output of one batch kept for the backward pass (counted by forward hooks
   on the meta device, an upper bound).

Disk: a LoRA fold keeps its adapters and head; a full fine-tune keeps every weight. While a fold trains it holds
its best and last weights and ``state.pt`` (the optimizer's two moments), removed when it finishes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from mitoprobe.store.errors import ConfigError

from .config import FinetuneConfig
from .model import add_lora

# Dense peak TFLOP/s of one card (NVIDIA H100 SXM5 datasheet, without sparsity). PyTorch runs fp32 matmuls on
# the CUDA cores by default (torch.backends.cuda.matmul.allow_tf32 is False), so fp32 training is priced at FP32.
GPUS = {"h100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
        "h200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}}
ACHIEVED = 0.40  # assumed fraction of the peak a training step or a forward pass reaches (stated, not measured)
BUILD_S = 60.0  # assumed seconds to build a model and load its weights, once per job
GIB = 2**30


@dataclass(frozen=True)
class Cost:
    """One job's estimate: GPU seconds, peak GPU memory, checkpoint disk (peak while training, kept after)."""

    gpu_s: float
    peak_gib: float
    disk_peak_gib: float = 0.0
    disk_kept_gib: float = 0.0
    source: str = "flops"  # "measured" (gpu_check.json) or "flops"


@dataclass(frozen=True)
class Arch:
    """What the FLOP-based estimate needs of one architecture (per image at its input size)."""

    forward_flops: float
    params: int
    lora_params: int  # trainable parameters the paper's LoRA adds (peft's adapters, counted on the meta device)
    activations: int  # numel of every module output of one image's forward pass (what training keeps)
    largest_output: int  # numel of the largest module output (inference keeps a few such tensors alive)


def arch_of(recipe, overrides: dict | None = None, lora_r: int = 8,
            lora_targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")) -> Arch:
    """Count ``recipe``'s architecture on the meta device (seconds for a 1B-parameter ViT, no memory);
    ``lora_r`` 0 for a model that is fully fine-tuned (no adapters)."""
    key = (recipe, tuple(sorted((overrides or {}).items())), lora_r, tuple(lora_targets))
    return _arch(key)


@lru_cache(maxsize=64)
def _arch(key) -> Arch:
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mitoprobe.embedder.factory import create_kwargs

    recipe, overrides, lora_r, targets = key
    with torch.device("meta"):
        model = timm.create_model(recipe.arch, pretrained=False,
                                  **{"num_classes": 0, **create_kwargs(recipe, dict(overrides))}).eval()
        outputs = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())
                                         if isinstance(out, torch.Tensor) else None)
                 for m in model.modules() if not list(m.children())]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, 3, recipe.input_size, recipe.input_size))
        for h in hooks:
            h.remove()
        params = sum(p.numel() for p in model.parameters())
        if lora_r:  # peft's own adapters, counted (0: the model is fully fine-tuned)
            add_lora(model, FinetuneConfig(model=recipe.name, lora_r=lora_r, lora_targets=targets))
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    return Arch(forward_flops=float(counter.get_total_flops()), params=params,
                lora_params=lora, activations=int(sum(outputs)), largest_output=int(max(outputs, default=0)))


def read_gpu_check(path: str | Path | None) -> dict | None:
    """The ``models`` entries of a ``gpu_check.json`` (None without a path); a file that is not one is refused."""
    if path is None:
        return None
    p = Path(path)
    try:
        report = json.loads(p.read_text())
        models = report["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--gpu-check {p}: not a gpu_check.json ({type(exc).__name__}: {exc}); write one with "
                          "`python -m benchmarks.gpu_check` on the machine that will run the plan") from None
    if report.get("dry_run"):
        raise ConfigError(f"--gpu-check {p} is a dry run (--device cpu): its figures mean nothing")
    return models


def _measured(entry: dict, phase: str, key: str):
    v = (entry.get(phase) or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and v > 0 else None


def _peak(gpu: str, precision: str) -> float:
    return GPUS[gpu][precision if precision in GPUS[gpu] else "fp32"] * 1e12 * ACHIEVED


def training_rates(arch: Arch, method: str, train_precision: str, eval_precision: str, measured: dict | None,
                   gpu: str = "h100") -> tuple[float, float, float, str]:
    """(training, held-out scoring, test scoring) images/s of one model's fine-tuning job, and their source.

    Held-out scoring runs at the training precision (it picks the checkpoint), the test sets at the evaluation
    precision. A forward pass costs 1/3 of a full fine-tuning step and 1/2 of a LoRA one; measured, the test
    rate is the embedding phase's where that ran at the evaluation precision (H-optimus: fp16)."""
    factor = 3.0 if method == "full" else 2.0
    step = _measured(measured or {}, method, "images_per_s")
    if step:
        fed = _measured(measured, "fed", "images_per_s") or _measured(measured, "loader", "images_per_s")
        forward = factor * step
        test = forward if eval_precision == train_precision else _measured(measured, "embed", "images_per_s") or forward
        return min(step, fed) if fed else step, forward, test, "measured"
    return (_peak(gpu, train_precision) / (factor * arch.forward_flops), _peak(gpu, train_precision) / arch.forward_flops,
            _peak(gpu, eval_precision) / arch.forward_flops, "flops")


def finetune_cost(arch: Arch, method: str, *, epochs: float, n_train: int, n_val: int, n_test: int,
                  batch_size: int, train_precision: str = "fp32", eval_precision: str = "fp32",
                  measured: dict | None = None, gpu: str = "h100") -> Cost:
    """One fold: ``epochs`` x (a pass over the training part + scoring the held-out part), then the held-out
    part and the test sets once more with the selected weights."""
    train_ips, val_ips, test_ips, source = training_rates(arch, method, train_precision, eval_precision, measured, gpu)
    secs = BUILD_S + epochs * (n_train / train_ips + n_val / val_ips) + n_val / val_ips + n_test / test_ips
    trainable = arch.params if method == "full" else arch.lora_params
    kept = 4 * trainable  # fp32 safetensors of what the fold trains
    peak_mem = (_measured(measured or {}, method, "peak_gpu_gib") or
                (4 * arch.params + 12 * trainable + 4 * arch.activations * batch_size) / GIB)
    return Cost(gpu_s=secs, peak_gib=peak_mem, disk_peak_gib=(2 * kept + 8 * trainable) / GIB,
                disk_kept_gib=kept / GIB, source=source)


def embed_cost(arch: Arch, n_images: int, precision: str, dims: int, measured: dict | None = None,
               gpu: str = "h100", batch_size: int = 256) -> Cost:
    """Embedding ``n_images`` once: forward passes at the recipe's precision; stored fp32 vectors of ``dims``."""
    ips = _measured(measured or {}, "embed", "images_per_s")
    source = "measured" if ips else "flops"
    ips = ips or _peak(gpu, precision) / arch.forward_flops
    bytes_per = 2 if precision in ("bf16", "fp16") else 4
    peak_mem = (_measured(measured or {}, "embed", "peak_gpu_gib") or
                bytes_per * (arch.params + 4 * arch.largest_output * batch_size) / GIB)
    vectors = 4 * dims * n_images / GIB
    return Cost(gpu_s=BUILD_S + n_images / ips, peak_gib=peak_mem, disk_peak_gib=vectors, disk_kept_gib=vectors,
                source=source)


def makespan(job_seconds: list[float], n_gpus: int) -> float:
    """Wall seconds of ``job_seconds`` on ``n_gpus`` one-GPU workers, longest job first to the least loaded
    (the order ``paper run`` submits them in)."""
    loads = [0.0] * max(1, n_gpus)
    for s in sorted(job_seconds, reverse=True):
        i = loads.index(min(loads))
        loads[i] += s
    return max(loads)
