"""Training cost of offline-preset variants, side by side: img/s of the real training loop, alternating.

Why: a round-4 candidate (docs/offline-accuracy.md) may only be adopted if ``run --full`` stays within its
30-minute budget on a 2-core AVX2 CPU at fp32. This trains fold 0 of each variant for one short epoch with
``finetune.train.train_fold`` (the loop ``finetune`` runs: batched augmentation, forward, loss, backward,
AdamW, the cosine step), variants alternating so a change of load hits them alike, and prints img/s per
try with the CPU's capability, cores and load average. On an AVX-512 machine, emulate an AVX2 one with
``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (torch's and oneDNN's kernel choice).

Usage: MITOPROBE_CPU_BF16=0 python -m benchmarks.preset_variant_cost --store STORE \\
           --variant preset '{}' --variant aux '{"aux_subtypes": 1.0}' [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.job import fold_images
from mitoprobe.finetune.precision import training_precision
from mitoprobe.finetune.train import Runtime, train_fold
from mitoprobe.store import Store

from .machine import header


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="a store holding the benchmark patches")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True,
                    help="a name and the preset's overrides as JSON ('{}' = the preset)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per try")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    st = Store(a.store)
    proto = load_protocol(st)
    configs = {name: FinetuneConfig.preset("offline", max_epochs=1, max_steps=a.steps, **json.loads(js))
               for name, js in a.variant}
    first = next(iter(configs.values()))
    print(header(), flush=True)
    print(f"precision {training_precision('cpu', first.cpu_bf16, first.precision)}, "
          f"{a.steps} steps of batch {first.batch_size} per try", flush=True)
    data = {name: fold_images(st, proto, 0, [], cfg.targets, cfg.aux_subtypes > 0) for name, cfg in configs.items()}
    rates: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for name, cfg in configs.items():
                rec = train_fold(cfg, data[name], Path(tmp) / f"{name}-{r}", Runtime(progress=False))
                rates[name].append(rec["images_per_s"])
                print(f"try {r + 1} {name}: {rec['images_per_s']:.0f} img/s (load {os.getloadavg()[0]:.1f})", flush=True)
    base = np.median(next(iter(rates.values())))
    for name, v in rates.items():
        print(f"{name}: median {np.median(v):.0f} img/s ({np.median(v) / base:.3f}x the first variant)")


if __name__ == "__main__":
    main()
