"""``finetune()``: folds of one fine-tuning configuration, trained and written to the results tables.

A run lives in ``<store>/finetune/<run_key>/`` (``run_key`` = hash of the config and the base
recipe id), with ``config.json`` and one ``fold<k>/`` per fold (see ``train``). Re-running the same
command skips finished folds, resumes an interrupted one from its last epoch, and appends each fold's
rows (``family="finetune"``, ``head`` = the method) to ``runs``/``predictions`` once. When all five
folds are done the fold ensemble (``fold = -1``, mean probability) is added, as for the probes.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mitoprobe import embedder
from mitoprobe.classifiers import metrics as M
from mitoprobe.classifiers import runs as R
from mitoprobe.classifiers.labels import check_name
from mitoprobe.classifiers.protocol import FOLD_SEED, N_FOLDS, Protocol, load_protocol
from mitoprobe.classifiers.scoring import (ENSEMBLE_RULE, THRESHOLD_RULES, Ensemble, fold_ensemble, heldout_frame,
                                 prediction_frame, score_test_set)
from mitoprobe.embedder.factory import check_weights, count_params
from mitoprobe.embedder.job import resolve_device
from mitoprobe.paper import REPO as PAPER_REPO
from mitoprobe.paper import SCRIPTS_AT
from mitoprobe.store import Store
from mitoprobe.store.atomic import write_json
from mitoprobe.store.errors import FinetuneError, StoreError
from mitoprobe.store.hashing import canonical_json, config_hash, source_version
from mitoprobe.store.integrity import preflight
from mitoprobe.store.schema import SUBTYPE_COLUMNS, VOTE_COLUMNS

from .config import SUBTYPES, FinetuneConfig
from .data import StoredPatches
from .registry import runs_root
from .train import DONE_FILE, FoldImages, Runtime, read_predictions, train_fold

log = logging.getLogger(__name__)

FAMILY = "finetune"
CPU_PARAM_LIMIT = 30_000_000  # above this, CPU training needs --allow-cpu (ViT-S/ResNet-50 scale fits)


@dataclass
class FinetuneSummary:
    run_key: str
    run_dir: Path
    folds_done: list[int]
    rows_appended: int
    ensemble: bool
    records: dict[int, dict]
    family_id: str = ""  # the run's family in ``runs`` (what a fusion names as a member)


def code_version() -> str:
    """Package version + a digest of this subpackage's source (results from changed code never mix)."""
    return source_version(Path(__file__).parent, tag="ft")


def run_key(cfg: FinetuneConfig, recipe_id: str) -> str:
    return config_hash({"config": cfg.to_dict(), "recipe_id": recipe_id})


def run_identity(cfg: FinetuneConfig, recipe, weights=None, overrides: dict | None = None) -> tuple[str, str]:
    """(base recipe id, run key) of ``cfg`` on ``recipe`` with these weights; test-only ``overrides`` (tiny
    stand-ins) enter the key, so they never share a run folder with the real architecture."""
    rid = embedder.recipe_id_of(recipe, weights)
    return rid, run_key(cfg, rid if not overrides else config_hash({"recipe_id": rid, "overrides": overrides}))


def parse_folds(spec: str | list[int] | None, n_folds: int) -> list[int]:
    """``None``/``"all"`` -> every fold; ``"0,1"`` -> those folds; ``"1..5"`` -> folds 0..4 (1-based range).
    A list of fold numbers is checked the same way."""
    if spec in (None, "", "all"):
        return list(range(n_folds))
    usage = f"--folds {spec!r}: folds are 0..{n_folds - 1} (a comma list like 0,3, or a 1-based range like 1..5)"
    try:
        if isinstance(spec, (list, tuple)):
            out = sorted({int(k) for k in spec})
        elif ".." in spec:
            a, b = (int(s) for s in spec.split(".."))
            out = list(range(a - 1, b))
        else:
            out = sorted({int(s) for s in spec.split(",")})
    except (TypeError, ValueError):
        raise FinetuneError(usage) from None
    bad = [k for k in out if not 0 <= k < n_folds]
    if bad or not out:
        raise FinetuneError(usage)
    return out


def check_config(cfg: FinetuneConfig) -> None:
    """FinetuneError listing every numeric field of ``cfg`` that cannot work (the config itself checks
    its choices); called before a run folder is made, so a bad value never leaves one behind."""
    c = cfg
    bad = [msg for ok, msg in (
        (c.lr > 0, f"lr {c.lr} must be > 0"),
        (c.weight_decay >= 0, f"weight_decay {c.weight_decay} must be >= 0"),
        (c.lora_r >= 1, f"lora_r {c.lora_r} must be >= 1"),
        (c.lora_alpha > 0, f"lora_alpha {c.lora_alpha} must be > 0"),
        (0 <= c.lora_dropout < 1, f"lora_dropout {c.lora_dropout} must be in [0, 1)"),
        (c.method != "lora" or bool(c.lora_targets), "lora_targets must name at least one module"),
        (0 < c.lr_factor < 1, f"lr_factor {c.lr_factor} must be in (0, 1)"),
        (c.lr_patience >= 0, f"lr_patience {c.lr_patience} must be >= 0"),
        (c.min_lr >= 0, f"min_lr {c.min_lr} must be >= 0"),
        (c.early_stop >= 1, f"early_stop {c.early_stop} must be >= 1"),
        (c.focal_gamma >= 0, f"focal_gamma {c.focal_gamma} must be >= 0"),
        (len(c.crop_scale) == 2 and 0 < c.crop_scale[0] <= c.crop_scale[1] <= 1,
         f"crop_scale {c.crop_scale} must be (a, b) with 0 < a <= b <= 1"),
        (len(c.color_jitter) == 4 and min(c.color_jitter) >= 0 and c.color_jitter[3] <= 0.5,
         f"color_jitter {c.color_jitter} must be 4 values >= 0 (hue <= 0.5)"),
        (c.rotate_degrees >= 0, f"rotate_degrees {c.rotate_degrees} must be >= 0"),
        (c.hed >= 0, f"hed {c.hed} must be >= 0"),
        (c.eval_resize >= 0, f"eval_resize {c.eval_resize} must be >= 0 (0 = the recipe's)"),
        (not c.batch_augment or c.train_crop == "random",
         f"batch augmentation crops first: train_crop {c.train_crop!r} needs per-sample augmentation (--sample-augment)"),
        (c.seed >= 0, f"seed {c.seed} must be >= 0"),
    ) if not ok]
    if bad:
        raise FinetuneError(f"finetune configuration for {c.model} cannot work: {'; '.join(bad)}")


def check_device(device: str, recipe, overrides: dict | None, allow_cpu: bool) -> tuple[str, int]:
    dev = resolve_device(device)
    n = count_params(recipe, overrides)
    if dev == "cpu" and n > CPU_PARAM_LIMIT and not allow_cpu:
        raise FinetuneError(f"{recipe.name} has {n / 1e6:.0f}M parameters and no GPU is visible: fine-tuning it on "
                            f"CPU would take days. Run on a CUDA machine, or pass --allow-cpu to do it anyway "
                            f"(models up to {CPU_PARAM_LIMIT / 1e6:.0f}M parameters run on CPU without it).")
    return dev, n


def default_workers(device: str) -> int:
    """DataLoader workers when none are asked for: the scripts' 8 on CUDA (bounded by the cores, one left for the
    trainer), none on CPU, where a worker takes a core from the training step (batch augmentation needs none)."""
    if not device.startswith("cuda"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def vote_fractions(st: Store, patch_ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per training patch, the fraction of its experts who called it atypical; its label where none voted."""
    votes = st.patches(columns=["patch_id", *VOTE_COLUMNS]).set_index("patch_id").loc[patch_ids, list(VOTE_COLUMNS)]
    voted = votes.notna().sum(axis=1).to_numpy()
    atypical = votes.eq(True).sum(axis=1).to_numpy()
    return np.where(voted > 0, atypical / np.maximum(voted, 1), labels).astype(np.float32)


def subtype_targets(st: Store, patch_ids: np.ndarray) -> np.ndarray:
    """Per training patch, its experts' subtype calls as a distribution over ``SUBTYPES`` (N, 8): one expert's
    call counts 1/(experts who called one); all zeros where nobody did (the auxiliary loss skips that row)."""
    calls = st.patches(columns=["patch_id", *SUBTYPE_COLUMNS]).set_index("patch_id").loc[patch_ids, list(SUBTYPE_COLUMNS)]
    index = {name: i for i, name in enumerate(SUBTYPES)}
    out = np.zeros((len(patch_ids), len(SUBTYPES)), np.float32)
    for col in SUBTYPE_COLUMNS:
        cls = calls[col].map(index).to_numpy(dtype=np.float64, na_value=np.nan)
        rows = np.flatnonzero(~np.isnan(cls))
        out[rows, cls[rows].astype(int)] += 1
    n = out.sum(axis=1, keepdims=True)
    return np.divide(out, n, out=out, where=n > 0)


def fold_images(st: Store, proto: Protocol, k: int, test_sets: list[str], targets: str = "majority",
                aux_subtypes: bool = False) -> FoldImages:
    """Fold ``k`` of the protocol as pixels: the training side with labels (and, for ``targets="votes"``, the
    experts' vote fractions as soft targets; with ``aux_subtypes``, their subtype calls as columns 1-8 of the
    targets), the test sets without labels. No PNG is read here: the patches are located in the store's parts
    (``finetune.data.StoredPatches``) and read a row group at a time while training and predicting."""
    fd = proto.fold_data(k)
    ids = proto.train["patch_id"].to_numpy()
    tests = {name: proto.tests[name].patch_ids for name in test_sets}
    need = list(ids) + [p for v in tests.values() for p in v]
    train_ids, train_y = ids[fd.train_idx], fd.y[fd.train_idx]
    soft = vote_fractions(st, train_ids, train_y) if targets == "votes" else None
    if aux_subtypes:
        main = (train_y if soft is None else soft).astype(np.float32)
        soft = np.column_stack([main, subtype_targets(st, train_ids)])
    return FoldImages(fold=k, train_ids=train_ids, train_y=train_y, val_ids=ids[fd.val_idx],
                      val_y=fd.y[fd.val_idx], test_ids=tests, images=StoredPatches(st.patch_parts, need), train_target=soft)


def _family(run_dir: Path) -> tuple[str, dict]:
    conf = json.loads((run_dir / "config.json").read_text())
    return R.family_id(conf), conf


def _rows(run_dir: Path, fold: int, rec: dict, proto: Protocol, proba: dict[str, np.ndarray], threshold: float,
          n_boot: int, heldout: tuple[np.ndarray, np.ndarray]):
    """Run rows + prediction frames of one fold (or of the fold ensemble with ``fold=-1``); ``heldout`` =
    (patch ids, probabilities) of the fold's held-out part (the ensemble's: out-of-fold), stored too."""
    fam, conf = _family(run_dir)
    rid = R.run_id(fam, fold, 0)
    cfg = conf["config"]
    base = dict(run_id=rid, family_id=fam, family=FAMILY, model=conf["model"], recipe_id=conf["recipe_id"],
                head=conf["head"], options=canonical_json(conf["options"]),
                config_json=canonical_json({**conf, **{k_: v for k_, v in rec.items() if k_ != "history"}, "fold": fold}),
                code_version=conf["code_version"], seed=cfg["seed"], fold=fold, repeat=0,
                threshold_rule=cfg["threshold"], val_auroc=rec["val_auroc"],
                val_balanced_accuracy=rec["val_balanced_accuracy"], n_train=rec["n_train"],
                fit_seconds=rec.get("fit_seconds", 0.0), predict_seconds=rec.get("predict_seconds", 0.0))
    runs, frames = [], []
    for name, ts in proto.tests.items():
        p = proba[name]
        if len(p) != len(ts.patch_ids):
            raise StoreError(f"{run_dir}: fold {fold} has {len(p)} {name} predictions, the store {len(ts.patch_ids)}")
        runs.append(dict(base, test_set=name, **score_test_set(ts, p, threshold, n_boot, int(cfg["seed"]))))
        frames.append(prediction_frame(rid, ts, fold, p, threshold))
    frames.append(heldout_frame(rid, heldout[0], fold, heldout[1], threshold))
    return runs, frames


def _fold_heldout(run_dir: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    preds = read_predictions(run_dir / f"fold{k}")
    val = preds[preds["split"] == "val"]
    return val["patch_id"].to_numpy(), val["probability"].to_numpy()


def _fold_test_proba(run_dir: Path, k: int, proto: Protocol) -> dict[str, np.ndarray]:
    preds = read_predictions(run_dir / f"fold{k}")
    return {name: preds.loc[preds["split"] == name, "probability"].to_numpy() for name in proto.tests}


def _appended(st: Store) -> set[str]:
    runs = st.results.read("runs", columns=["run_id"]) if st.results.parts("runs") else pd.DataFrame()
    return set(runs["run_id"]) if len(runs) else set()


def _ensemble(run_dir: Path, proto: Protocol, records: dict[int, dict], cfg: FinetuneConfig
              ) -> tuple[Ensemble, np.ndarray]:
    """The fold ensemble from the stored fold predictions (``classifiers.scoring.fold_ensemble``), and the
    out-of-fold probability of every training patch (in ``proto.train`` order)."""
    oof = np.full(len(proto.train), np.nan)
    pos = {p: i for i, p in enumerate(proto.train["patch_id"])}
    proba: dict[str, list] = {name: [] for name in proto.tests}
    for k in sorted(records):
        preds = read_predictions(run_dir / f"fold{k}")
        val = preds[preds["split"] == "val"]
        oof[[pos[p] for p in val["patch_id"]]] = val["probability"].to_numpy()
        for name, p in _fold_test_proba(run_dir, k, proto).items():
            proba[name].append(p)
    return fold_ensemble(proto.train["y"].to_numpy(), oof, proba, cfg.threshold), oof


def _check_run_dir(run_dir: Path, key: str) -> Path:
    """The run folder's ``config.json``; refused when ``run_dir`` is a file or holds another run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FinetuneError(f"--out {run_dir} is a file; pass a folder")
    conf_path = run_dir / "config.json"
    if conf_path.is_file():
        stored = json.loads(conf_path.read_text())
        if stored.get("run_key") != key:
            raise FinetuneError(f"{run_dir} holds run {stored.get('run_key')}, not {key} (another configuration); "
                                "choose another --out")
    return conf_path


def finetune(store: Store | str | Path | None, cfg: FinetuneConfig, folds: str | list[int] | None = None, *,
             device: str = "auto", allow_cpu: bool = False, out: str | Path | None = None,
             num_workers: int | None = None, progress: bool = True, weights: str | Path | None = None,
             overrides: dict | None = None, n_boot: int | None = None, hf_token_env: str = "HF_TOKEN",
             eval_batch_size: int | None = None, on_epoch=None, name: str | None = None) -> FinetuneSummary:
    """Train the requested folds of ``cfg`` (skipping finished ones) and append their result rows.

    ``overrides`` replaces the recipe's timm kwargs (tests: tiny stand-ins); it enters the run key.
    ``num_workers``: PNG-decoding DataLoader workers (None: ``default_workers(device)``).
    ``name``: the run's label in tables (``classifiers.labels``), written to a new run's ``config.json``
    only when given (so an unnamed run's family id is what it always was); a started run keeps its own.
    """
    # Everything that can fail on the arguments fails here, before the run folder or config.json exists.
    display_name = check_name(name)
    want = parse_folds(folds, N_FOLDS)
    check_config(cfg)
    for option, value, low in (("num_workers", num_workers, 0), ("eval_batch_size", eval_batch_size, 1),
                               ("n_boot", n_boot, 0)):
        if value is not None and value < low:
            raise FinetuneError(f"finetune {option} {value} must be >= {low}")
    st = store if isinstance(store, Store) else Store(store)
    recipe = embedder.get_recipe(cfg.model)
    if recipe.arch == "handcrafted":
        raise FinetuneError(f"{recipe.name} has no network to fine-tune; pick a backbone (`mitoprobe embed --list`)")
    dev, n_params = check_device(device, recipe, overrides, allow_cpu)
    num_workers = default_workers(dev) if num_workers is None else num_workers
    check_weights(recipe, weights, hf_token_env=hf_token_env, overrides=overrides)
    rid, key = run_identity(cfg, recipe, weights, overrides)
    run_dir = Path(out) if out else runs_root(st) / key
    conf_path = _check_run_dir(run_dir, key)
    preflight(st, results=True, folds=True)  # a damaged store: refused before the folds, run folder or results
    proto = load_protocol(st, train_on=cfg.train_on)  # the first write a run may make (the store's folds, once)
    if proto.n_folds != N_FOLDS:
        want = parse_folds(folds, proto.n_folds)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not conf_path.is_file():
        entry = cfg.paper_entry()
        write_json(dict(run_key=key, family=FAMILY, model=cfg.model, recipe_id=rid, head=cfg.method,
                        options=cfg.options(), config=cfg.to_dict(),
                        paper_entry=dict(key=entry.key, script=entry.script, repo=f"{PAPER_REPO}@{SCRIPTS_AT}"),
                        overrides=overrides, weights=str(weights) if weights else None,
                        threshold_rule=THRESHOLD_RULES[cfg.threshold], code_version=code_version(),
                        protocol=dict(n_folds=N_FOLDS, fold_seed=FOLD_SEED, test_sets=sorted(proto.tests),
                                      train_on=cfg.train_on),
                        n_params=n_params, **({"name": display_name} if display_name else {})), conf_path)
    elif display_name and (given := json.loads(conf_path.read_text()).get("name")) != display_name:
        log.warning("run %s was started %s and keeps that label (--name names a new run only)", key[:8],
                    f"as {given!r}" if given else "without --name")
    rt = Runtime(device=dev, num_workers=num_workers, progress=progress, weights=str(weights) if weights else None,
                 overrides=overrides, hf_token_env=hf_token_env, on_epoch=on_epoch,
                 eval_batch_size=eval_batch_size or (256 if dev.startswith("cuda") else 32))
    nb = M.N_BOOTSTRAP if n_boot is None else n_boot
    fam, _ = _family(run_dir)
    label = f"fine-tuning {cfg.model}/{cfg.method} ({fam})"
    appended = 0
    for k in want:
        rec = train_fold(cfg, fold_images(st, proto, k, list(proto.tests), cfg.targets, cfg.aux_subtypes > 0),
                         run_dir / f"fold{k}", rt)
        with R.family_lock(st, fam, label):  # "appended yet?" and the append under one writer's lock
            if R.run_id(fam, k, 0) not in _appended(st):
                runs, frames = _rows(run_dir, k, rec, proto, _fold_test_proba(run_dir, k, proto), rec["threshold"],
                                     nb, _fold_heldout(run_dir, k))
                R.append(st, runs, frames)
                appended += len(runs)
    records = {k: json.loads((run_dir / f"fold{k}" / DONE_FILE).read_text())
               for k in range(proto.n_folds) if (run_dir / f"fold{k}" / DONE_FILE).is_file()}
    ensemble = len(records) == proto.n_folds
    with R.family_lock(st, fam, label):
        if ensemble and R.run_id(fam, -1, 0) not in _appended(st):
            ens, oof = _ensemble(run_dir, proto, records, cfg)
            rec = dict(val_auroc=ens.val_auroc, val_balanced_accuracy=ens.val_balanced_accuracy,
                       n_train=ens.n_train, threshold=ens.threshold, ensemble=ENSEMBLE_RULE)
            runs, frames = _rows(run_dir, -1, rec, proto, ens.proba, ens.threshold, nb,
                                 (proto.train["patch_id"].to_numpy(), oof))
            R.append(st, runs, frames)
            appended += len(runs)
    return FinetuneSummary(key, run_dir, sorted(records), appended, ensemble, records, fam)
