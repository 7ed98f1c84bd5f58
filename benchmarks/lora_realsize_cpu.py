"""The paper's LoRA at real size on a CPU: parameters, build time, one optimizer step and peak memory per model.

What: for each of the 7 foundation models (Virchow, Virchow2, UNI, UNI2-h, Prov-GigaPath, H-optimus-0/1),
the paper's LoRA (``FinetuneConfig.paper(f"{stem}.random", "lora")`` through ``build_classifier``: r=8,
alpha=16 on qkv/proj/fc1/fc2 plus the 1-logit head) built at real size with random weights: trainable and
total parameter counts, seconds to build, seconds of one optimizer step (the config's Adam, BCE, fp32 as the
paper trains) at batch 2 on 224 px inputs, and peak resident memory. Each model runs in its own subprocess,
so each peak RSS (``ru_maxrss`` and ``VmHWM`` of that process: the interpreter and torch included) is that
model's alone. Prints a markdown table under the machine's line (``benchmarks.machine.header``: vector units,
cores, torch threads, load average at start, and the load average at the end: CPU timings mean little
without them).

Why: the parameter counts the reports quote, and what a LoRA step of each model costs where no GPU is lent
(memory: does it fit; time: how far from practical a CPU run is).

Heavy: real-size ViT-g models take minutes each on a small CPU and several GiB of memory.
``--tiny`` is a dry run with the tiny stand-ins of ``gpu_check.py`` at 32 px (seconds; figures meaningless).

Example: python -m benchmarks.lora_realsize_cpu --json lora_realsize_cpu.json
         python -m benchmarks.lora_realsize_cpu --only uni,virchow2 --batch 2
         python -m benchmarks.lora_realsize_cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.model import build_classifier, parameter_counts
from mitoprobe.finetune.precision import autocast, training_precision
from mitoprobe.finetune.train import loss_fn, make_optimizer
from mitoprobe.paper import FOUNDATION

from .gpu_check import TINY_SIZE, TINY_VIT  # the models' tiny stand-ins
from .machine import facts, header, load_average

REPO = Path(__file__).resolve().parents[1]


def _proc_status_gib(key: str) -> float | None:
    """``VmHWM`` / ``VmRSS`` of this process from /proc/self/status, in GiB (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return round(int(line.split()[1]) / 2**20, 2)  # kB
    except OSError:
        pass
    return None


def measure(stem: str, batch: int, steps: int, tiny: bool) -> dict:
    """In the child: build the paper's LoRA classifier, take ``steps`` optimizer steps, report."""
    import peft  # noqa: F401  (imported before the clock starts: build_s is the build, not the imports)
    import timm  # noqa: F401
    import torch

    rss_base = _proc_status_gib("VmRSS")  # the interpreter, torch, timm and peft before any model
    t0 = time.perf_counter()
    cfg = FinetuneConfig.paper(f"{stem}.random", "lora", batch_size=batch)
    model, recipe = build_classifier(cfg, overrides=TINY_VIT if tiny else None)
    build_s = time.perf_counter() - t0
    rss_built = _proc_status_gib("VmRSS")
    counts = parameter_counts(model)
    size = TINY_SIZE if tiny else recipe.input_size
    precision = training_precision("cpu", cfg.cpu_bf16, cfg.precision)  # fp32: the paper trains in fp32
    y_np = np.arange(batch) % 2
    crit = loss_fn(cfg, y_np)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.as_tensor(y_np, dtype=torch.float32)
    model.train()
    step_s = []
    for _ in range(steps):
        t = time.perf_counter()
        with autocast("cpu", precision):
            logits = model(x)
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step_s.append(round(time.perf_counter() - t, 3))
    return dict(model=stem, recipe=cfg.model, tiny=tiny, batch=batch, input_size=size, precision=precision,
                params_total=counts["total"], params_trainable=counts["trainable"], build_s=round(build_s, 2),
                step_s=step_s, loss=float(loss), rss_before_build_gib=rss_base, rss_after_build_gib=rss_built,
                peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),  # KiB on Linux
                vm_hwm_gib=_proc_status_gib("VmHWM"), torch_threads=torch.get_num_threads())


def run_child(stem: str, a) -> dict:
    """One model in a fresh interpreter (its own peak RSS); a crash or OOM kill becomes an error row."""
    cmd = [sys.executable, "-m", __spec__.name, "--child", stem, "--batch", str(a.batch), "--steps", str(a.steps)]
    # ^ this module, by name (``__spec__.name`` is it under ``python -m`` too, where ``__name__`` is __main__)
    cmd += ["--tiny"] if a.tiny else []
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)  # cwd: the package is importable there
    wall = round(time.perf_counter() - t0, 1)
    if p.returncode == 0 and p.stdout.strip():
        return dict(json.loads(p.stdout.strip().splitlines()[-1]), wall_s=wall)
    tail = (p.stderr.strip().splitlines() or [""])[-1][:300]
    killed = " (killed: out of memory?)" if p.returncode < 0 else ""
    return dict(model=stem, error=f"exit {p.returncode}{killed}: {tail}", wall_s=wall)


def table(rows: list[dict]) -> str:
    lines = ["| model | trainable | total | trainable % | build s | step s | peak RSS GiB | RSS before build GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | | |")
            continue
        share = 100 * r["params_trainable"] / r["params_total"]
        lines.append(f"| {r['model']} | {r['params_trainable']:,} | {r['params_total']:,} | {share:.2f} | "
                     f"{r['build_s']:.1f} | {' / '.join(f'{s:.2f}' for s in r['step_s'])} | {r['peak_rss_gib']:.2f} | "
                     f"{r['rss_before_build_gib']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help=f"comma list of models (default all: {','.join(FOUNDATION)})")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps timed one by one (the first includes "
                                                         "one-off allocations)")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny stand-ins at 32 px (checks the script)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and CPU facts here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.child, a.batch, a.steps, a.tiny)), flush=True)
        return 0
    only = [s.strip() for s in a.only.split(",") if s.strip()] or list(FOUNDATION)
    unknown = sorted(set(only) - set(FOUNDATION))
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {','.join(FOUNDATION)}")
    machine = facts()
    start = header(machine)
    print(start + (" | TINY dry run: figures meaningless" if a.tiny else ""), flush=True)
    rows = []
    for stem in only:
        rows.append(run_child(stem, a))
        print(json.dumps(rows[-1]), flush=True)
    end = f"load average at the end {load_average()}"
    sizes = sorted({r["input_size"] for r in rows if "input_size" in r})
    print(f"\n{start}\n{end}\nthe paper's LoRA (r=8, alpha=16), batch {a.batch}, fp32, {'/'.join(map(str, sizes))} px"
          f"{' (tiny stand-ins)' if a.tiny else ''}\n\n{table(rows)}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(dict(machine=machine, machine_line=start, load_end=end, tiny=a.tiny, rows=rows),
                                     indent=2) + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
