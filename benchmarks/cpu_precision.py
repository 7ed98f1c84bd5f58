"""Training speed of the offline preset's CNN at fp32 and at bf16 autocast on this CPU, side by side.

Why: bf16 is fast only where the CPU has it natively (AVX512-BF16 / AMX); on an AVX2-only CPU it is
emulated and about ten times slower, so ``finetune.precision`` picks fp32 there. This prints both
rates with the CPU's capability, cores and load, so a figure always says which machine it holds for.

Usage: python -m benchmarks.cpu_precision [--steps 4] [--batch-size 64] [--threads 1]
Synthetic tensors at the preset's input size (64 px since round 3 of issue 13); no store needed.
"""

from __future__ import annotations

import argparse
import time

import torch

from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.model import build_classifier
from mitoprobe.finetune.precision import FORCE_ENV, autocast, cpu_has_native_bf16

from .machine import header


def images_per_s(model, x, y, steps: int, bf16: bool) -> float:
    """Training steps (forward, BCE, backward, AdamW) per second x batch size, after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if bf16:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        with autocast("cpu", "bf16" if bf16 else "fp32"):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = FinetuneConfig.preset("offline")
    model, recipe = build_classifier(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 3, recipe.input_size, recipe.input_size, generator=g)
    y = (torch.rand(a.batch_size, generator=g) < 0.3).float()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fp32 = images_per_s(model, x, y, a.steps, bf16=False)
    model.load_state_dict(state)
    bf16 = images_per_s(model, x, y, a.steps, bf16=True)
    print(header())
    print(f"{recipe.name} at {recipe.input_size} px, batch {a.batch_size}, {a.steps} steps, {a.threads} torch "
          f"thread(s); finetune.precision's native bf16 (${FORCE_ENV} honoured): {cpu_has_native_bf16()}")
    print(f"fp32 {fp32:8.1f} img/s")
    print(f"bf16 {bf16:8.1f} img/s   bf16/fp32 = {bf16 / fp32:.2f}x; the preset uses "
          f"{'bf16' if cpu_has_native_bf16() else 'fp32'} here")


if __name__ == "__main__":
    main()
