"""Fine-tuning's peak memory and training speed as the store grows (issue 30), before/after side by side.

Each measurement is one fresh interpreter (``python -c``, its working directory the checkout under test, so
``import mitoprobe`` is that checkout's: ``--code NAME=DIR``, e.g. a ``git worktree`` of the commit before
and this one) that loads the protocol of a store (``--store NAME=PATH[@TRAIN_ON]``; ``TRAIN_ON`` is the
dataset trained on, default AMi-Br), makes fold 0's images (``finetune.job.fold_images``) and trains it
(``finetune.train.train_fold``: one epoch of ``--steps`` steps, then the held-out part and every test set
predicted) on the CPU, and prints one JSON line: the process's peak RSS (``ru_maxrss``, after fold_images and
at the end), fold_images' seconds and the training loop's images per second, data loading included (warm-up
and the first reads weigh on a few steps, so speed runs take a whole epoch). With ``--workers`` 0 (the CPU
default) the process is the whole run; a worker's own RSS would count the pages it shares with the trainer
since the fork, so none is reported (each worker's PNG cache is bounded by ``finetune.data.TRAIN_CACHE_BYTES``
by construction).

Configurations (``--configs``): ``sample``: the per-sample path (the paper's LoRA recipe and augmentation on a
tiny random ViT at 32 px, batch 8: data loading is most of its step); ``offline``: the offline preset
(batch augmentation, the small CNN at 64 px, batch 64); ``offline-streamed``: the offline preset with
``finetune.data.DECODED_BUDGET`` 0 (its pixels and held-out inputs decoded per batch: what a cohort above the
budget gets; checkouts without the budget are skipped). ``--workers`` sets the DataLoader workers (CPU default 0).

``--memory`` runs every store x configuration x checkout once; ``--speed`` runs every configuration on the first
store ``--repeats`` times, alternating the checkouts (A B A B ...), with ``tta="none"`` (training is what is
timed), and reports the median of each and their ratio, twice: training images per wall second, and per CPU
second of the main process (``train_fold``'s clock is swapped for ``time.process_time`` in the child, the wall
times kept beside; less sensitive to other load on a shared machine, but without the workers' CPU).

The 10^5-patch store (a few minutes of CPU, once):
  python -m benchmarks.synthetic_cohort --n 100000 --out /tmp/cohort-1e5 --seed 0 --split train
  mitoprobe data import ../shared/datasets/AMi-Br_Benchmark --store /tmp/store-1e5
  mitoprobe data import --manifest /tmp/cohort-1e5/manifest.csv --dataset Cohort --store /tmp/store-1e5

Example: git worktree add --detach /tmp/before <commit before>
         python -m benchmarks.finetune_memory --code before=/tmp/before --code after=. \\
             --store x1=/tmp/bench --store 1e5=/tmp/store-1e5@Cohort --memory --speed --json /tmp/ftmem.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from .machine import facts, header

REPO = Path(__file__).resolve().parents[1]
MARK = "FINETUNE_MEMORY "
CONFIGS = ("sample", "offline", "offline-streamed")

# One measurement, run by ``python -c`` in the checkout under test (argument: the JSON of ``measure``'s job).
CHILD = r'''
import json, resource, sys, tempfile, time
from pathlib import Path

import torch

job = json.loads(sys.argv[1])
torch.set_num_threads(job["threads"])
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.embedder.recipes import Recipe, register
from mitoprobe.finetune import FinetuneConfig
from mitoprobe.finetune.job import fold_images
from mitoprobe.finetune.train import Runtime, train_fold
from mitoprobe.store import Store

def mib(who):
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)

TINY = "vit_memory_bench.random"
register(Recipe(name=TINY, family="test", arch="vit_tiny_patch16_224",
                kwargs=(("img_size", 32), ("patch_size", 8), ("embed_dim", 32), ("depth", 2), ("num_heads", 2),
                        ("num_classes", 0)),
                input_size=32, resize=32, outputs=(("cls", 32), ("mean", 32)), note="tiny benchmark ViT"))
extra = {"tta": "none"} if job["speed"] else {}
if job["config"] == "sample":
    cfg = FinetuneConfig.paper(TINY, "lora", max_epochs=1, max_steps=job["steps"], **extra)
else:
    cfg = FinetuneConfig.preset("offline", max_epochs=1, max_steps=job["steps"], **extra)
if job["config"] == "offline-streamed":
    import mitoprobe.finetune.data as D
    if not hasattr(D, "DECODED_BUDGET"):
        print(%(mark)r + json.dumps({"skipped": "no DECODED_BUDGET in this checkout"}))
        sys.exit(0)
    D.DECODED_BUDGET = 0
import mitoprobe.finetune.train as T

class Clock:
    """train_fold's clock: wall times kept, process CPU seconds returned (its images_per_s is then per CPU second)."""
    def __init__(self):
        self.wall = []
    def perf_counter(self):
        self.wall.append(time.perf_counter())
        return time.process_time()

clock = T.time = Clock()
st = Store(job["store"])
proto = load_protocol(st, train_on=job["train_on"], create=False)
t0 = time.perf_counter()
data = fold_images(st, proto, 0, list(proto.tests), cfg.targets, cfg.aux_subtypes > 0)
out = {"fold_images_s": round(time.perf_counter() - t0, 2), "rss_after_fold_images_mib": mib(resource.RUSAGE_SELF),
       "n_train": len(data.train_ids), "n_val": len(data.val_ids),
       "n_test": sum(len(v) for v in data.test_ids.values())}
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    rec = train_fold(cfg, data, Path(tmp) / "fold0",
                     Runtime(device="cpu", num_workers=job["workers"], progress=False, eval_batch_size=64))
images = rec["images_per_s"] * rec["fit_seconds"]  # one epoch: its images; its loop's CPU s, wall[0:2] its wall
out.update(train_fold_s=round(time.perf_counter() - t0, 1), peak_rss_mib=mib(resource.RUSAGE_SELF),
           images_per_s=round(images / (clock.wall[1] - clock.wall[0]), 1),
           images_per_cpu_s=round(rec["images_per_s"], 1))
print(%(mark)r + json.dumps(out))
''' % {"mark": MARK}


def measure(code: Path, store: Path, train_on: str, config: str, steps: int, workers: int, threads: int,
            speed: bool, timeout: float) -> dict:
    """One fresh interpreter in ``code``: the child's JSON, or ``error`` with the tail of its output."""
    job = dict(store=str(store), train_on=train_on, config=config, steps=steps, workers=workers, threads=threads,
               speed=speed)
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], cwd=code, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(MARK)]
    if p.returncode or not lines:
        return {"error": f"exit {p.returncode}: " + " | ".join((p.stdout + p.stderr).strip().splitlines()[-3:])}
    return json.loads(lines[-1][len(MARK):])


def _named(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} {item!r}: NAME=VALUE")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", action="append", default=[], help="NAME=DIR: a checkout to measure (repeatable)")
    ap.add_argument("--store", action="append", default=[], help="NAME=PATH[@TRAIN_ON] (repeatable)")
    ap.add_argument("--configs", default="sample,offline,offline-streamed", help=f"comma list of {CONFIGS}")
    ap.add_argument("--memory", action="store_true", help="peak RSS of every store x configuration x checkout")
    ap.add_argument("--speed", action="store_true", help="training images/s on the first store, alternating")
    ap.add_argument("--steps", type=int, default=20, help="training steps (memory runs)")
    ap.add_argument("--speed-steps", type=int, default=60, help="training steps (speed runs)")
    ap.add_argument("--repeats", type=int, default=3, help="speed runs per checkout and configuration")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each run")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--json", type=Path, help="write the rows and the machine's facts here")
    a = ap.parse_args(argv)
    codes = {k: Path(v).resolve() for k, v in _named(a.code or [f"this={REPO}"], "--code").items()}
    stores = {k: (Path(v.split("@")[0]), v.split("@")[1] if "@" in v else "AMi-Br")
              for k, v in _named(a.store, "--store").items()}
    configs = [c for c in a.configs.split(",") if c]
    if not stores or not (a.memory or a.speed) or set(configs) - set(CONFIGS):
        raise SystemExit(f"give --store, --memory and/or --speed, and --configs from {CONFIGS}")
    print(header(), flush=True)
    print(f"each run: a fresh process, {a.threads} torch thread(s), {a.workers} DataLoader worker(s), CPU", flush=True)
    rows = []
    if a.memory:
        print("\n| store | train on | config | code | train patches | fold_images s | RSS after fold_images MiB "
              "| peak RSS MiB | train_fold s |\n|---|---|---|---|---:|---:|---:|---:|---:|", flush=True)
        for sname, (path, train_on) in stores.items():
            for config in configs:
                for cname, code in codes.items():
                    r = measure(code, path, train_on, config, a.steps, a.workers, a.threads, False, a.timeout)
                    rows.append(dict(kind="memory", store=sname, train_on=train_on, config=config, code=cname, **r))
                    cells = [r.get(k, "") for k in ("n_train", "fold_images_s", "rss_after_fold_images_mib",
                                                    "peak_rss_mib", "train_fold_s")]
                    note = r.get("error") or r.get("skipped")
                    print(f"| {sname} | {train_on} | {config} | {cname} | " + " | ".join(map(str, cells))
                          + (f" ({note})" if note else "") + " |", flush=True)
    if a.speed:
        sname, (path, train_on) = next(iter(stores.items()))
        print(f"\ntraining images/s on {sname} ({train_on}), {a.speed_steps} steps at most (one epoch at most), "
              f"{a.repeats} alternating runs each:", flush=True)
        for config in configs:
            rates: dict[tuple[str, str], list[float]] = {}
            for _ in range(a.repeats):
                for cname, code in codes.items():
                    r = measure(code, path, train_on, config, a.speed_steps, a.workers, a.threads, True, a.timeout)
                    rows.append(dict(kind="speed", store=sname, train_on=train_on, config=config, code=cname, **r))
                    for unit in ("images_per_s", "images_per_cpu_s"):
                        if unit in r:
                            rates.setdefault((unit, cname), []).append(r[unit])
            for unit, label in (("images_per_s", "img/s"), ("images_per_cpu_s", "img per CPU s")):
                med = {c: statistics.median(rates[unit, c]) for c in codes if (unit, c) in rates}
                base = next(iter(med.values()), None)
                print(f"  {config}, {label}: " + "; ".join(
                    f"{c} {m:.1f} (runs {', '.join(f'{x:.1f}' for x in rates[unit, c])})"
                    + (f", {m / base:.3f}x" if base and c != next(iter(med)) else "") for c, m in med.items()),
                    flush=True)
    if a.json:
        a.json.write_text(json.dumps({"machine": facts(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
