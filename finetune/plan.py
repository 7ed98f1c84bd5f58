"""The paper's whole comparison as a plan: every job, its state in the store, and what it will cost.

``paper_plan(store)`` lists, for the paper's models whose weights are reachable (a hub token, a local
weights folder, or ``random=True``: the ``.random`` twins, a dry run):

* ``embed`` -- the foundation model's vectors of every patch (``embedder.embed``, one view);
* ``probe`` -- the paper's linear probe (``torch_linear`` with that model's script settings, on the recipe's
  paper outputs) and the project's heads on the same vectors (CPU, seconds);
* ``finetune`` -- one job per (model, fold): LoRA for the 7 foundation models, full fine-tuning for the 3
  end-to-end baselines, each with its script's settings (``FinetuneConfig.paper``).

A job's state is read from the store, never written: ``done``, ``partial`` (an embedding set with patches
still to do; a fold with saved epochs -- which one), or ``todo``. Each job carries an estimate
(``finetune.estimate``: measured on the machine when a ``gpu_check.json`` is given, else FLOP-based).
Planning writes nothing: a plan of a store that was never probed leaves it byte-identical.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mitoprobe import embedder
from mitoprobe.classifiers import runs as R
from mitoprobe.classifiers.heads import DEFAULT_HEADS
from mitoprobe.classifiers.protocol import load_protocol
from mitoprobe.embedder.factory import check_weights
from mitoprobe.embedder.recipes import random_twin
from mitoprobe.paper import END_TO_END, FOUNDATION
from mitoprobe.store import Store
from mitoprobe.store.errors import ConfigError, MitoprobeError

from . import estimate as E
from .config import FinetuneConfig
from .job import run_identity
from .registry import runs_root
from .train import DONE_FILE, STATE_FILE

KINDS = ("embed", "probe", "finetune")
DONE, PARTIAL, TODO = "done", "partial", "todo"
PAPER_PROBE = "torch_linear"  # the paper's probe (classifiers.heads.torch_linear, its script's settings)
PROBE_HEADS = (PAPER_PROBE, *DEFAULT_HEADS)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Epochs a fold is expected to train before early stopping, until the store has finished folds to average: the
# patience plus an assumed 15 epochs to the best one (the scripts allow 100; the bound is shown beside it).
ASSUMED_BEST_EPOCH = 15


@dataclass(frozen=True)
class Job:
    kind: str  # embed | probe | finetune
    stem: str  # the paper's model (``mitoprobe.paper.models``)
    model: str  # the recipe that runs it
    method: str = ""  # finetune: lora | full
    fold: int = -1
    state: str = TODO
    detail: str = ""  # what is done of it ("epoch 12 saved", "4,100 of 6,573 patches")
    cost: E.Cost = field(default_factory=lambda: E.Cost(0.0, 0.0))  # what is still to do of it
    run_key: str = ""  # finetune: the run folder under <store>/finetune/
    bound_s: float = 0.0  # finetune: GPU seconds left if the fold runs to max_epochs (no early stop)

    @property
    def key(self) -> str:
        """The job's name in the plan and in progress lines (unique within a plan)."""
        if self.kind == "finetune":
            return f"{self.kind}:{self.model}:{self.method}:fold{self.fold}"
        return f"{self.kind}:{self.model}"

    @property
    def on_gpu(self) -> bool:
        return self.kind != "probe"


@dataclass
class Plan:
    """The jobs, the models left out and why, and what the jobs were planned with."""

    store_root: Path
    jobs: list[Job]
    skipped: dict[str, str]  # stem -> why its weights are not reachable
    weights: dict[str, str]  # stem -> local weights file
    recipes: dict[str, embedder.Recipe]  # stem -> the recipe its jobs run
    configs: dict[str, FinetuneConfig]  # stem -> its fine-tuning configuration
    overrides: dict[str, dict]  # stem -> tiny stand-in kwargs (tests)
    estimate_source: str
    gpu: str = "h100"
    args: dict = field(default_factory=dict)  # what ``paper_plan`` was called with (``replan``)

    def todo(self) -> list[Job]:
        return [j for j in self.jobs if j.state != DONE]

    def frame(self) -> pd.DataFrame:
        """One row per job: key, kind, model, method, fold, state, detail, GPU hours to go, peak GiB, disk GiB."""
        return pd.DataFrame([dict(job=j.key, kind=j.kind, model=j.model, method=j.method or "",
                                  fold=j.fold if j.fold >= 0 else None, state=j.state, detail=j.detail,
                                  gpu_hours=round(j.cost.gpu_s / 3600, 3) if j.on_gpu else 0.0,
                                  peak_gib=round(j.cost.peak_gib, 1),
                                  disk_peak_gib=round(j.cost.disk_peak_gib, 2),
                                  disk_kept_gib=round(j.cost.disk_kept_gib, 2), estimate=j.cost.source)
                             for j in self.jobs],
                            columns=["job", "kind", "model", "method", "fold", "state", "detail", "gpu_hours",
                                     "peak_gib", "disk_peak_gib", "disk_kept_gib", "estimate"]).astype({"fold": "Int64"})

    def wall_seconds(self, n_gpus: int) -> float:
        """Wall time of what is left on ``n_gpus`` GPUs: each embedding spreads over all of them (Ray Data,
        one after another), the fine-tuning folds are one-GPU jobs scheduled longest first."""
        todo = [j for j in self.todo() if j.on_gpu]
        embeds = sum(j.cost.gpu_s for j in todo if j.kind == "embed") / max(1, n_gpus)
        return embeds + E.makespan([j.cost.gpu_s for j in todo if j.kind == "finetune"], n_gpus)

    def totals(self, n_gpus: tuple[int, ...] = (1, 8)) -> dict:
        todo = self.todo()
        folds = [j for j in self.jobs if j.kind == "finetune"]
        return dict(jobs=len(self.jobs), to_do=len(todo),
                    gpu_hours=sum(j.cost.gpu_s for j in todo if j.on_gpu) / 3600,
                    gpu_hours_bound=sum(max(j.cost.gpu_s, j.bound_s) for j in todo if j.on_gpu) / 3600,
                    wall_hours={n: self.wall_seconds(n) / 3600 for n in n_gpus},
                    peak_gib=max((j.cost.peak_gib for j in todo if j.on_gpu), default=0.0),
                    disk_kept_gib=sum(j.cost.disk_kept_gib for j in self.jobs),
                    disk_peak_gib=sum(j.cost.disk_kept_gib for j in folds) +
                    max((j.cost.disk_peak_gib - j.cost.disk_kept_gib for j in folds), default=0.0))


def replan(plan: Plan) -> Plan:
    """The same plan with every job's state read from the store again (after a run)."""
    return paper_plan(plan.store_root, **plan.args)


def paper_stems(models: list[str] | str | None) -> list[str]:
    """The paper's models to plan (all 10 by default), in the paper's order; an unknown one is refused."""
    every = list(FOUNDATION + END_TO_END)
    if models in (None, "", "all"):
        return every
    asked = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
    bad = [m for m in asked if m not in every]
    if bad:
        raise ConfigError(f"--models: {', '.join(bad)} not in the paper; choose from {', '.join(every)}")
    return [m for m in every if m in asked]


def recipe_for(stem: str, random: bool) -> embedder.Recipe:
    """The recipe a stem runs with: its hub weights (``<stem>.hf``; EfficientNetV2-M, which the paper trains
    from scratch, is ``.random`` either way), or for a dry run its random-weight twin."""
    names = {r.name for r in embedder.list_recipes()}
    if random or f"{stem}.hf" not in names:
        return random_twin(stem)
    return embedder.get_recipe(f"{stem}.hf")


def weights_file(folder: Path | None, stem: str, recipe: embedder.Recipe) -> Path | None:
    """``<folder>/<stem>.<ext>`` or ``<folder>/<recipe name>.<ext>`` (a local copy of the model's weights)."""
    if folder is None:
        return None
    for base in (recipe.name, stem):
        for ext in WEIGHT_SUFFIXES:
            if (folder / f"{base}{ext}").is_file():
                return folder / f"{base}{ext}"
    return None


def paper_pooling(recipe: embedder.Recipe) -> str:
    """The probe pooling that reads the recipe's paper outputs (``cls``, or CLS ⊕ mean for Virchow)."""
    outs = tuple(recipe.paper_outputs)
    return {("cls",): "cls", ("mean",): "mean", ("cls", "mean"): "both"}.get(outs, "vector")


def _reachable(recipe, weights, overrides, hf_token_env: str) -> str | None:
    """None when the weights can be loaded, else why not (the check's first sentence)."""
    if recipe.weights in ("random", "none") or overrides:
        return None
    try:
        check_weights(recipe, weights, hf_token_env=hf_token_env)
    except Exception as exc:  # a refusal, a hub or network error: the model is left out, the plan goes on
        text = str(exc) if isinstance(exc, MitoprobeError) else f"{type(exc).__name__}: {exc}"
        return text.split(". ")[0].splitlines()[0]
    return None


# A hub check that fails after this long met a network that does not answer (retries, time-outs): the other hub
# models are then not asked (each would wait as long), and are left out with that reason.
HUB_SILENT_S = 5.0


def paper_plan(store: Store | str | Path, *, models: list[str] | str | None = None, random: bool = False,
               weights_dir: str | Path | None = None, hf_token_env: str = "HF_TOKEN",
               gpu_check: str | Path | None = None, gpu: str = "h100", settings: dict | None = None,
               recipes: dict[str, embedder.Recipe] | None = None, overrides: dict[str, dict] | None = None,
               folds: list[int] | None = None) -> Plan:
    """The plan for ``store`` (read-only). ``random``: the ``.random`` twins (a dry run); ``weights_dir``: local
    weights files (``weights_file``), else the hub with the token in ``hf_token_env``; ``gpu_check``: a
    measured ``gpu_check.json`` for the estimates, else FLOP counts on ``gpu``. ``settings``: FinetuneConfig
    fields changed for every fold (a smoke run's ``max_epochs``, say; such runs are not the paper's and the
    verdict says so). ``recipes`` / ``overrides``: per stem, another recipe / tiny architecture kwargs (tests).
    ``folds``: a subset."""
    st = store if isinstance(store, Store) else Store(store)
    if gpu not in E.GPUS:
        raise ConfigError(f"--gpu {gpu!r}: choose from {', '.join(E.GPUS)}")
    measured = E.read_gpu_check(gpu_check)
    folder = Path(weights_dir) if weights_dir else None
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"--weights {folder} is not a folder of weights files (<model>.safetensors)")
    proto = load_protocol(st, create=False)
    want = sorted(set(folds)) if folds is not None else list(range(proto.n_folds))
    if not want or any(not 0 <= k < proto.n_folds for k in want):
        raise ConfigError(f"--folds {folds}: folds are 0..{proto.n_folds - 1}")
    sizes = _fold_sizes(proto)
    n_test = int(sum(len(t.patch_ids) for t in proto.tests.values()))
    n_patches = len(st.patches(columns=["patch_id"]))
    runs = _probe_runs(st)
    plan = Plan(st.root, [], {}, {}, {}, {}, dict(overrides or {}),
                f"measured ({gpu_check})" if measured else f"FLOP-based ({gpu}, {E.ACHIEVED:.0%} of peak assumed)",
                gpu, dict(models=models, random=random, weights_dir=weights_dir, hf_token_env=hf_token_env,
                          gpu_check=gpu_check, gpu=gpu, settings=settings, recipes=recipes, overrides=overrides,
                          folds=folds))
    hub_down = ""
    for stem in paper_stems(models):
        recipe = (recipes or {}).get(stem) or recipe_for(stem, random)
        w = weights_file(folder, stem, recipe)
        on_hub = recipe.weights == "hf" and w is None
        t0 = time.perf_counter()
        why = hub_down if on_hub and hub_down else _reachable(recipe, w, plan.overrides.get(stem), hf_token_env)
        if why and on_hub and not hub_down and time.perf_counter() - t0 > HUB_SILENT_S:
            hub_down = f"not asked: the hub did not answer for {stem} ({why})"
        if why:
            plan.skipped[stem] = why
            continue
        plan.recipes[stem], plan.weights[stem] = recipe, str(w) if w else None
        method = "lora" if stem in FOUNDATION else "full"
        cfg = FinetuneConfig.paper(recipe.name, method, **(settings or {}))
        plan.configs[stem] = cfg
        arch = E.arch_of(recipe, plan.overrides.get(stem), cfg.lora_r if method == "lora" else 0, cfg.lora_targets)
        m = (measured or {}).get(stem)
        if stem in FOUNDATION:
            plan.jobs += _embed_and_probe(st, stem, recipe, w, arch, m, n_patches, runs, gpu)
        plan.jobs += _folds(st, stem, recipe, w, cfg, arch, m, want, sizes, n_test, plan.overrides.get(stem), gpu)
    return plan


def _fold_sizes(proto) -> dict[int, tuple[int, int]]:
    out = {}
    for k in range(proto.n_folds):
        fd = proto.fold_data(k)
        out[k] = (len(fd.train_idx), len(fd.val_idx))
    return out


def _probe_runs(st: Store) -> pd.DataFrame:
    cols = ["family", "model", "recipe_id", "head", "code_version", "fold"]
    if not st.results.parts("runs"):
        return pd.DataFrame(columns=cols)
    runs = st.results.read("runs", columns=cols)
    return runs[(runs["family"] == R.FAMILY) & (runs["fold"] == -1)]


def _embedding_state(st: Store, recipe, weights) -> tuple[int, str | None]:
    """(patches embedded, recipe id of the stored set) of ``recipe``'s vectors (one view per patch)."""
    try:
        rid = embedder.recipe_id_of(recipe, weights, st.root)
    except Exception:  # noqa: BLE001 -- a hub recipe's id needs its served commit; the embed job resolves it
        rid = None
    sets = [s for s in st.features.sets() if s.recipe_id == rid or (rid is None and s.name == recipe.name)]
    if not sets:
        return 0, None
    return len({p for p, v in st.features.stored_keys(sets[-1]) if v == "none"}), sets[-1].recipe_id


def _embed_and_probe(st, stem, recipe, weights, arch, measured, n_patches, runs, gpu) -> list[Job]:
    have, rid = _embedding_state(st, recipe, weights)
    left = n_patches - have
    state = DONE if left <= 0 else PARTIAL if have else TODO
    detail = f"{have:,} of {n_patches:,} patches" if have else ""
    dims = sum(d for _, d in recipe.outputs)
    cost = E.embed_cost(arch, left, recipe.precision, dims, measured, gpu) if left > 0 else E.Cost(0.0, 0.0)
    jobs = [Job("embed", stem, recipe.name, state=state, detail=detail, cost=cost)]
    mine = runs[(runs["model"] == recipe.name) & (runs["recipe_id"] == rid) &
                (runs["code_version"] == R.code_version())] if rid else runs.iloc[:0]
    heads_done = sorted(set(mine["head"]) & set(PROBE_HEADS))
    pstate = DONE if len(heads_done) == len(PROBE_HEADS) else PARTIAL if heads_done else TODO
    jobs.append(Job("probe", stem, recipe.name, method=",".join(PROBE_HEADS), state=pstate,
                    detail=f"{len(heads_done)} of {len(PROBE_HEADS)} heads" if heads_done else "",
                    cost=E.Cost(0.0, 0.0, source="cpu")))
    return jobs


def saved_epoch(fold_dir: Path) -> int:
    """Epochs a fold has saved (0 when none): read from ``state.pt`` memory-mapped, so a full fine-tune's
    optimizer state (gigabytes) is not read to learn one number."""
    import torch

    p = fold_dir / STATE_FILE
    if not p.is_file():
        return 0
    return int(torch.load(p, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def _expected_epochs(run_dir: Path, cfg: FinetuneConfig) -> float:
    """Mean epochs of the run's finished folds, else the patience plus ``ASSUMED_BEST_EPOCH``."""
    done = [json.loads(p.read_text()).get("epochs", 0) for p in run_dir.glob(f"fold*/{DONE_FILE}")]
    if done:
        return float(np.mean(done))
    return float(min(cfg.max_epochs, cfg.early_stop + ASSUMED_BEST_EPOCH))


def _folds(st, stem, recipe, weights, cfg, arch, measured, want, sizes, n_test, overrides, gpu) -> list[Job]:
    from .precision import evaluation_precision, training_precision

    _, key = run_identity(cfg, recipe, weights, overrides)
    run_dir = runs_root(st) / key
    expected = _expected_epochs(run_dir, cfg)
    train_p = training_precision("cuda", cfg.cpu_bf16, cfg.precision)
    eval_p = evaluation_precision("cuda", train_p, cfg.eval_precision)
    jobs = []
    for k in want:
        fold_dir = run_dir / f"fold{k}"
        n_train, n_val = sizes[k]
        if (fold_dir / DONE_FILE).is_file():
            rec = json.loads((fold_dir / DONE_FILE).read_text())
            jobs.append(Job("finetune", stem, recipe.name, cfg.method, k, DONE, f"{rec.get('epochs')} epochs",
                            run_key=key))
            continue
        epoch = saved_epoch(fold_dir)
        left = max(1.0, expected - epoch) if epoch < cfg.max_epochs else 0.0
        costs = [E.finetune_cost(arch, cfg.method, epochs=e, n_train=n_train, n_val=n_val, n_test=n_test,
                                 batch_size=cfg.batch_size, train_precision=train_p, eval_precision=eval_p,
                                 measured=measured, gpu=gpu) for e in (left, max(0, cfg.max_epochs - epoch))]
        detail = f"epoch {epoch} of <= {cfg.max_epochs} saved" if epoch else f"~{expected:.0f} epochs expected"
        jobs.append(Job("finetune", stem, recipe.name, cfg.method, k, PARTIAL if epoch else TODO, detail, costs[0],
                        key, bound_s=costs[1].gpu_s))
    return jobs

