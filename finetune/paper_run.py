"""``paper run``: a plan's jobs, resumable, on this machine or across a Ray cluster of GPUs.

Every job is idempotent against the store, so running the plan again does only what is left:
``embedder.embed`` embeds the patches not embedded yet, ``classifiers.runner.sweep`` skips stored families,
``finetune`` skips finished folds, resumes a started one from its last saved epoch and appends each fold's
rows once (under the family's lock; the fold ensemble by whichever fold finishes last).

Engines:

* ``local`` -- the jobs one after another in this process.
* ``ray`` -- embeddings through the Ray Data engine (``embedder.ray_engine``: one actor per GPU), the probes
  in this driver (CPU, seconds), and each (model, fold) fine-tuning job as one Ray task asking for one GPU
  (one CPU where no GPU is used), submitted longest first. The store must sit on a file system every node
  mounts at the same path (docs/design.md). A task lost with its node (killed, preempted) is retried by Ray
  on another node (``max_retries``) and resumes from the fold's last saved epoch there. Each attempt that
  trains an epoch records itself (node, pid, the epoch it resumed after) in ``<fold>/attempts.jsonl``.

Progress: one line per finished job, with the GPU hours still planned and an ETA from the estimates scaled by
how long the finished jobs took against theirs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mitoprobe import embedder
from mitoprobe.classifiers.derived import build as build_views
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.classifiers.runner import sweep
from mitoprobe.embedder.job import resolve_device
from mitoprobe.store import Store
from mitoprobe.store.errors import ConfigError

from .config import FinetuneConfig
from .job import finetune, run_identity
from .plan import PAPER_PROBE, PROBE_HEADS, Job, Plan, paper_pooling, replan, saved_epoch
from .registry import runs_root

ENGINES = ("local", "ray")
ATTEMPTS_FILE = "attempts.jsonl"


@dataclass
class RunReport:
    """What a run did: per job key, its outcome line; the plan as it stands afterwards."""

    done: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after: Plan | None = None


def _node() -> str:
    """The Ray node id inside a Ray task, else the host name (where an attempt ran)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return socket.gethostname()


def _attempt_recorder(fold_dir: Path, start_epoch: int) -> Callable[[int], None]:
    """An ``on_epoch`` hook that appends this attempt's line to ``attempts.jsonl`` after its first saved epoch
    (so an attempt that fails on its arguments leaves no file behind)."""
    line = dict(node=_node(), host=socket.gethostname(), pid=os.getpid(), resumed_after_epoch=start_epoch,
                started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    written = False

    def on_epoch(epoch: int) -> None:
        nonlocal written
        if not written:
            with open(fold_dir / ATTEMPTS_FILE, "a") as f:  # one short line: an atomic append
                f.write(json.dumps(line) + "\n")
            written = True

    return on_epoch


def read_attempts(fold_dir: Path) -> list[dict]:
    p = fold_dir / ATTEMPTS_FILE
    return [json.loads(s) for s in p.read_text().splitlines() if s.strip()] if p.is_file() else []


def finetune_fold(store_root: str, cfg: FinetuneConfig, fold: int, recipe: embedder.Recipe, weights: str | None,
                  overrides: dict | None, device: str, n_boot: int | None) -> dict:
    """One (model, fold) job: the body of a Ray task and of the local engine. The recipe travels with the job,
    so a worker process that never registered it (a recipe file, a test's tiny model) still resolves it."""
    if recipe.name not in {r.name for r in embedder.list_recipes()}:
        embedder.register(recipe)
    st = Store(store_root)
    _, key = run_identity(cfg, recipe, weights, overrides)
    fold_dir = runs_root(st) / key / f"fold{fold}"
    t0 = time.perf_counter()
    summary = finetune(st, cfg, [fold], device=device, weights=weights, overrides=overrides, progress=False,
                       n_boot=n_boot, on_epoch=_attempt_recorder(fold_dir, saved_epoch(fold_dir)))
    rec = summary.records.get(fold, {})
    return dict(seconds=time.perf_counter() - t0, epochs=rec.get("epochs"), node=_node(),
                rows=summary.rows_appended, ensemble=summary.ensemble)


def _run_embed(st: Store, plan: Plan, job: Job, device: str, engine: str) -> str:
    """The model's vectors, then its derived views (the map's projection, the robustness index), as
    ``mitoprobe embed`` makes them."""
    s = embedder.embed(st, job.model, views="none", device=device, engine=engine,
                       weights=plan.weights.get(job.stem), progress=False)
    build_views(st, s.recipe_id)
    return f"{s.rows_written:,} vectors written"


def _run_probe(st: Store, plan: Plan, job: Job, n_boot: int | None) -> str:
    """The paper's probe on the recipe's paper outputs, the project's heads on all of them."""
    extra = {} if n_boot is None else dict(n_boot=n_boot)
    recipe = plan.recipes[job.stem]
    paper = sweep(st, job.model, heads=[PAPER_PROBE], pooling=paper_pooling(recipe), show_progress=False, **extra)
    ours = sweep(st, job.model, heads=[h for h in PROBE_HEADS if h != PAPER_PROBE], show_progress=False, **extra)
    return f"{len(paper) + len(ours)} run rows"


class Progress:
    """One line per finished job and an ETA: the planned GPU seconds left, scaled by how the finished jobs'
    measured time compared with their estimates, over the GPUs working in parallel."""

    def __init__(self, plan: Plan, n_parallel: int, echo: Callable[[str], None]):
        self.todo = {j.key: j for j in plan.todo()}
        self.n, self.parallel, self.echo = len(self.todo), max(1, n_parallel), echo
        self.done, self.spent, self.planned = 0, 0.0, 0.0

    def finished(self, key: str, seconds: float, outcome: str) -> None:
        job = self.todo.pop(key)
        self.done += 1
        if job.on_gpu and job.cost.gpu_s:
            self.spent, self.planned = self.spent + seconds, self.planned + job.cost.gpu_s
        left = sum(j.cost.gpu_s for j in self.todo.values() if j.on_gpu)
        scale = self.spent / self.planned if self.planned else 1.0
        eta = left * scale / self.parallel
        self.echo(f"[{self.done}/{self.n}] {key}: {outcome} in {seconds:.1f} s · "
                  f"{left / 3600:.2f} GPU h planned left · ETA {_duration(eta)}")


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


def run_plan(store: Store | str | Path, plan: Plan, *, engine: str = "local", device: str = "auto",
             n_boot: int | None = None, echo: Callable[[str], None] = print, max_retries: int = 3,
             ray_address: str | None = None) -> RunReport:
    """Run what ``plan`` has left to do (see the module docstring); returns what happened and the plan after."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    st = store if isinstance(store, Store) else Store(store)
    dev = resolve_device(device)
    t0 = time.perf_counter()
    report = RunReport()
    todo = plan.todo()
    if any(j.kind == "finetune" for j in todo):
        load_protocol(st)  # the store's folds, saved once here: parallel fold jobs then only read them
    gpus = _ray_start(ray_address) if engine == "ray" else 1
    progress = Progress(plan, gpus, echo)
    for job in [j for j in todo if j.kind != "finetune"]:  # embeddings before the probes that read them
        _one(report, progress, job, lambda job=job: (_run_embed(st, plan, job, dev, engine) if job.kind == "embed"
                                                     else _run_probe(st, plan, job, n_boot)))
    folds = sorted((j for j in todo if j.kind == "finetune"), key=lambda j: -j.cost.gpu_s)  # longest first
    if engine == "ray":
        _ray_folds(st, plan, folds, dev, n_boot, max_retries, report, progress)
    else:
        for job in folds:
            _one(report, progress, job, lambda job=job: _fold_outcome(
                finetune_fold(str(st.root), plan.configs[job.stem], job.fold, plan.recipes[job.stem],
                              plan.weights.get(job.stem), plan.overrides.get(job.stem), dev, n_boot)))
    report.seconds = time.perf_counter() - t0
    report.after = replan(plan)
    return report


def _one(report: RunReport, progress: Progress, job: Job, fn) -> None:
    """Run one job; its failure is recorded and the plan goes on (a rerun retries what failed)."""
    t0 = time.perf_counter()
    try:
        outcome = fn()
    except Exception as exc:  # noqa: BLE001 -- one model's OOM or missing file must not stop the others
        report.failed[job.key] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        progress.finished(job.key, time.perf_counter() - t0, f"FAILED ({report.failed[job.key]})")
        return
    report.done[job.key] = outcome
    progress.finished(job.key, time.perf_counter() - t0, outcome)


def _fold_outcome(r: dict) -> str:
    return f"{r['epochs']} epochs on {r['node'][:12]}" + (" + fold ensemble" if r.get("ensemble") and r["rows"] else "")


def _ray_start(address: str | None) -> int:
    """Connect to (or start) Ray; the number of one-GPU jobs that can run at once (GPUs, else CPUs)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    res = ray.cluster_resources()
    return max(1, int(res.get("GPU", 0) or res.get("CPU", 1)))


def _ray_folds(st: Store, plan: Plan, folds: list[Job], device: str, n_boot, max_retries: int,
               report: RunReport, progress: Progress) -> None:
    """Each fold job as a Ray task (one GPU, or one CPU on CPU); results reported as they finish."""
    import ray

    gpu = device.startswith("cuda")
    task = ray.remote(finetune_fold).options(num_gpus=1 if gpu else 0, num_cpus=1, max_retries=max_retries,
                                             retry_exceptions=False)
    pending = {}
    for job in folds:
        ref = task.remote(str(st.root), plan.configs[job.stem], job.fold, plan.recipes[job.stem],
                          plan.weights.get(job.stem), plan.overrides.get(job.stem), device if gpu else "cpu", n_boot)
        pending[ref] = (job, time.perf_counter())
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job, started = pending.pop(ready[0])
        try:
            outcome = _fold_outcome(ray.get(ready[0]))
        except Exception as exc:  # the job's own error (after Ray's retries of lost nodes): the others go on
            report.failed[job.key] = f"{type(exc).__name__}: {str(exc).splitlines()[-1] if str(exc) else ''}"
            progress.finished(job.key, time.perf_counter() - started, f"FAILED ({report.failed[job.key]})")
            continue
        report.done[job.key] = outcome
        progress.finished(job.key, time.perf_counter() - started, outcome)
