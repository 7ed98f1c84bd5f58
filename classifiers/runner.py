"""The probe sweep: for one embedding set, every head x 5 folds x 3 test sets, under the protocol.

For each fold the head's grid is searched on the fold's held-out part (AUROC), the decision threshold
is set by the head's rule on that same held-out part, and the fitted model only *predicts* the test
sets. Test labels enter in ``scoring.score_test_set`` alone, after every choice is made and recorded.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import embedder
from store.errors import ProtocolError, RecipeError, StoreError
from store.hashing import canonical_json, config_hash
from store.progress import progress

from . import metrics as M
from . import runs as R
from .heads import DEFAULT_HEADS, HEADS, make_head, paper_probe_params, positive_proba
from .protocol import FOLD_SEED, N_FOLDS, FoldData, Protocol, TestSet, load_protocol
from .scoring import (ENSEMBLE_RULE, decision_threshold, fold_ensemble, heldout_frame, prediction_frame,
                      score_test_set)

log = logging.getLogger(__name__)

POOLINGS = {"all": None, "cls": ["cls"], "mean": ["mean"], "both": ["cls", "mean"], "vector": ["vector"]}
SELECTION_RULE = "max AUROC on the fold's held-out part (whole slides; training data only)"


@dataclass
class Features:
    """Vectors of one set, indexed by patch: ``rows_of(patch_ids)`` gives rows and owners."""

    name: str
    recipe_id: str
    keys: pd.DataFrame
    X: np.ndarray
    views: list[str]
    _by_patch: dict = field(default_factory=dict, repr=False)
    # fine-tuned sets (finetune's fold checkpoints): the one fold whose split they may be probed under
    only_fold: int | None = None

    def __post_init__(self):
        codes, uniq = pd.factorize(self.keys["patch_id"])
        order = np.argsort(codes, kind="mergesort")
        bounds = np.searchsorted(codes[order], np.arange(len(uniq) + 1))
        self._by_patch = {p: order[bounds[i]:bounds[i + 1]] for i, p in enumerate(uniq)}

    def rows_of(self, patch_ids) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, index into ``patch_ids`` of each row) covering every view of each patch."""
        rows, owner = [], []
        missing = []
        for i, p in enumerate(patch_ids):
            r = self._by_patch.get(p)
            if r is None:
                missing.append(p)
                continue
            rows.append(r)
            owner.append(np.full(len(r), i))
        if missing:
            raise StoreError(f"embedding set {self.name} lacks {len(missing)} patches (e.g. {missing[0]}); "
                             f"run `mitoprobe embed --model {self.name}` to complete it")
        return np.concatenate(rows), np.concatenate(owner)


def current_recipe_id(store, model: str) -> str:
    """The recipe id ``model`` has now, from the embedder's registry or a registered resolver (fine-tuned
    folds). Mandatory: a name nothing resolves raises RecipeError, never "use the newest stored set"."""
    return embedder.recipe_id_of(model, store_root=store.root)


def load_features(store, model: str, pooling: str = "all", tta: bool = False, recipe_id: str | None = None,
                  allow_stale: bool = False) -> Features:
    """One set's vectors; ``"a+b"`` concatenates sets ``a`` and ``b`` per (patch, view) (e.g. a fine-tuned
    fold's vectors with the handcrafted features; ``pooling`` applies to each part that has the outputs)."""
    if "+" in model:
        return _concat_features(store, model, pooling, tta, allow_stale)
    if pooling not in POOLINGS:
        raise ProtocolError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
    recipe_id = recipe_id or current_recipe_id(store, model)
    eset = store.features.resolve(model, recipe_id, allow_stale)
    outputs = POOLINGS[pooling]
    if outputs and any(o not in eset.outputs for o in outputs):
        raise ProtocolError(f"set {model} has outputs {list(eset.outputs)}; pooling {pooling!r} needs {outputs}")
    keys, X = store.features.read(model, eset.recipe_id, outputs=outputs, views=None if tta else ["none"],
                                  allow_stale=True)
    if len(keys) == 0:
        raise StoreError(f"set {model} has no original-view ('none') vectors")
    return Features(model, eset.recipe_id, keys, np.ascontiguousarray(X, dtype=np.float32),
                    sorted(keys["view"].unique()),
                    only_fold=_finetune_fold(eset.provenance))


def _concat_features(store, model: str, pooling: str, tta: bool, allow_stale: bool) -> Features:
    parts = [load_features(store, name, pooling if pooling in ("all", "vector") else "all", tta,
                           allow_stale=allow_stale) for name in model.split("+")]
    folds = {f.only_fold for f in parts} - {None}
    if len(folds) > 1:
        raise ProtocolError(f"{model}: parts come from different fine-tuned folds {sorted(folds)}")
    keys = parts[0].keys[["patch_id", "view"]].reset_index(drop=True)
    blocks = [parts[0].X]
    for f in parts[1:]:
        idx = pd.MultiIndex.from_frame(f.keys[["patch_id", "view"]]).get_indexer(pd.MultiIndex.from_frame(keys))
        if (idx < 0).any():
            raise StoreError(f"{model}: {f.name} lacks {(idx < 0).sum()} of {parts[0].name}'s (patch, view) rows")
        blocks.append(f.X[idx])
    rid = config_hash({"concat": [f.recipe_id for f in parts]})
    return Features(model, rid, keys, np.ascontiguousarray(np.hstack(blocks), dtype=np.float32),
                    sorted(keys["view"].unique()), only_fold=folds.pop() if folds else None)


def _finetune_fold(provenance: dict) -> int | None:
    """Vectors from fold k's fine-tuned checkpoint were trained on the other folds' patches: they may
    only be probed under fold k's split (None: any fold)."""
    k = (provenance.get("recipe") or {}).get("finetune_fold")
    return None if k is None or int(k) < 0 else int(k)


def _patch_mean(p_rows: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Average row probabilities over each patch's views (TTA); identity with one view."""
    return np.bincount(owner, weights=p_rows, minlength=n) / np.bincount(owner, minlength=n)


def _fit(head: str, params: dict, X, y, X_val, y_val):
    est = make_head(head, **params)
    if HEADS[head].uses_val:
        est.fit(X, y, X_val=X_val, y_val=y_val)
    else:
        est.fit(X, y)
    return est


def _seeded_params(head: str, params: dict, seed: int) -> dict:
    """``params`` plus ``random_state=seed`` when the head is stochastic and takes one."""
    sig = inspect.signature(HEADS[head].factory).parameters
    takes = "random_state" in sig or any(p.kind == p.VAR_KEYWORD for p in sig.values())
    est = make_head(head)
    last = est.steps[-1][1] if hasattr(est, "steps") else est
    if takes and "random_state" in last.get_params(deep=False):
        return {"random_state": seed, **params}
    return dict(params)


def grid_points(spec, params: dict) -> list[dict]:
    """The head's grid without the keys set explicitly (an explicit parameter is fixed, not searched),
    each remaining point once."""
    points: list[dict] = []
    for cand in spec.grid:
        free = {k: v for k, v in cand.items() if k not in params}
        if free not in points:
            points.append(free)
    return points


def fit_fold(head: str, params: dict, feats: Features, fd: FoldData, train_ids: np.ndarray) -> dict:
    """Selection and fitting for one fold, from training-side data only (``fd``: no test labels).

    Returns the fitted estimator, the chosen grid point, the held-out probabilities and threshold."""
    spec = HEADS[head]
    if feats.only_fold is not None and fd.fold != feats.only_fold:
        raise ProtocolError(f"{feats.name} comes from fold {feats.only_fold}'s fine-tuned checkpoint; probing it under "
                         f"fold {fd.fold} would validate on patches its backbone was trained on (leakage)")
    t0 = time.perf_counter()
    tr_rows, tr_owner = feats.rows_of(train_ids[fd.train_idx])
    va_rows, va_owner = feats.rows_of(train_ids[fd.val_idx])
    y_tr = fd.y[fd.train_idx][tr_owner]
    y_val_patch = fd.y[fd.val_idx]
    X_tr, X_va = feats.X[tr_rows], feats.X[va_rows]
    best = None
    tried = []
    for cand in grid_points(spec, params):
        est = _fit(head, {**cand, **params}, X_tr, y_tr, X_va, y_val_patch[va_owner])
        p_val = _patch_mean(positive_proba(est, X_va), va_owner, len(fd.val_idx))
        score = M.auroc(y_val_patch, p_val)
        tried.append({"params": cand, "val_auroc": score})
        if best is None or score > best[0]:
            best = (score, cand, est, p_val)
    score, chosen, est, p_val = best
    threshold = decision_threshold(spec.threshold_rule, y_val_patch, p_val)
    return dict(estimator=est, chosen=chosen, tried=tried, val_proba=p_val, threshold=float(threshold),
                val_auroc=float(score),
                val_balanced_accuracy=M.balanced_accuracy(y_val_patch, M.predict(p_val, threshold)),
                n_train=int(len(fd.train_idx)), fit_seconds=time.perf_counter() - t0)


def _predict(est, feats: Features, ts: TestSet) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    rows, owner = feats.rows_of(ts.patch_ids)
    p = _patch_mean(positive_proba(est, feats.X[rows]), owner, len(ts.patch_ids))
    return p, time.perf_counter() - t0


def run_family(store, feats: Features, proto: Protocol, head: str, options: dict, params: dict | None = None,
               seed: int = 0, repeat: bool = False, n_boot: int = M.N_BOOTSTRAP, progress=None) -> pd.DataFrame | None:
    """One head on one feature set: 5 fold models + the fold ensemble, scored on every test set,
    appended to ``runs``/``predictions``. Returns the run rows (None when skipped as a duplicate)."""
    spec = HEADS[head]
    params = {**_paper_defaults(head, feats.name), **(params or {})}  # recorded in the config: the family id
    config = dict(family=R.FAMILY, model=feats.name, recipe_id=feats.recipe_id, head=head, options=options,
                  params=params, grid=list(spec.grid), selection_rule=SELECTION_RULE,
                  threshold_rule=spec.threshold_rule, code_version=R.code_version(),
                  protocol=dict(n_folds=N_FOLDS, fold_seed=FOLD_SEED, test_sets=sorted(proto.tests)),
                  n_boot=n_boot)
    fam = R.family_id(config)
    rep = R.next_repeat(store, fam)
    if rep is not None and not repeat:
        log.info("skipping %s/%s %s: already in runs (family %s); pass repeat=True to record a repeat",
                 feats.name, head, options, fam)
        return None
    rep = rep or 0
    run_seed = seed + rep
    est_params = _seeded_params(head, params, run_seed)
    train_ids = proto.train["patch_id"].to_numpy()
    base = dict(family_id=fam, family=R.FAMILY, model=feats.name, recipe_id=feats.recipe_id, head=head,
                options=canonical_json(options), code_version=config["code_version"], seed=run_seed,
                repeat=rep, threshold_rule=spec.threshold_rule)
    runs, preds = [], []
    oof = np.full(len(train_ids), np.nan)
    fold_probs: dict[str, list[np.ndarray]] = {name: [] for name in proto.tests}
    for k in range(proto.n_folds):
        if feats.only_fold is not None and k != feats.only_fold:
            continue
        fd = proto.fold_data(k)
        fit = fit_fold(head, est_params, feats, fd, train_ids)
        oof[fd.val_idx] = fit["val_proba"]
        rid = R.run_id(fam, k, rep)
        preds.append(heldout_frame(rid, train_ids[fd.val_idx], k, fit["val_proba"], fit["threshold"]))
        cfg = dict(config, fold=k, seed=run_seed, selected=fit["chosen"], tried=fit["tried"],
                   estimator=_jsonable_params(fit["estimator"]))
        for name, ts in proto.tests.items():
            p, secs = _predict(fit["estimator"], feats, ts)
            fold_probs[name].append(p)
            runs.append(dict(base, run_id=rid, config_json=canonical_json(cfg), fold=k, test_set=name,
                             threshold=fit["threshold"], val_auroc=fit["val_auroc"],
                             val_balanced_accuracy=fit["val_balanced_accuracy"], n_train=fit["n_train"],
                             fit_seconds=fit["fit_seconds"], predict_seconds=secs,
                             **score_test_set(ts, p, fit["threshold"], n_boot, run_seed)))
            preds.append(prediction_frame(rid, ts, k, p, fit["threshold"]))
        if progress is not None:
            progress.update(1)
    if feats.only_fold is None:  # a fold-k fine-tuned set has no fold ensemble
        ens = fold_ensemble(proto.train["y"].to_numpy(), oof, fold_probs, spec.threshold_rule)
        rid = R.run_id(fam, -1, rep)
        cfg = dict(config, fold=-1, seed=run_seed, ensemble=ENSEMBLE_RULE)
        for name, ts in proto.tests.items():
            p = ens.proba[name]
            runs.append(dict(base, run_id=rid, config_json=canonical_json(cfg), fold=-1, test_set=name,
                             threshold=ens.threshold, val_auroc=ens.val_auroc,
                             val_balanced_accuracy=ens.val_balanced_accuracy, n_train=ens.n_train,
                             fit_seconds=0.0, predict_seconds=0.0,
                             **score_test_set(ts, p, ens.threshold, n_boot, run_seed)))
            preds.append(prediction_frame(rid, ts, -1, p, ens.threshold))
        preds.append(heldout_frame(rid, train_ids, -1, oof, ens.threshold))
    R.append(store, runs, preds)
    return pd.DataFrame(runs)


def _paper_defaults(head: str, model: str) -> dict:
    """The paper's probe takes its script's settings for the model's family (only Prov-GigaPath's
    differ); explicit params win. Other heads and unregistered sets: none."""
    if head != "torch_linear":
        return {}
    try:
        family = embedder.get_recipe(model).family
    except RecipeError:
        return {}
    return paper_probe_params(family)


def _jsonable_params(est) -> dict:
    return json.loads(canonical_json({k: v for k, v in est.get_params(deep=True).items()
                                      if not hasattr(v, "get_params") and k != "steps"}))


def sweep(store, model: str, heads=None, pooling: str = "all", tta: bool = False, seed: int = 0,
          repeat: bool = False, recipe_id: str | None = None, allow_stale: bool = False,
          n_boot: int = M.N_BOOTSTRAP, head_params: dict | None = None, show_progress: bool = True,
          protocol: Protocol | None = None, n_threads: int | None = 1) -> pd.DataFrame:
    """Run every head on one model's stored vectors; returns the new run rows (skipped heads absent).

    ``n_threads`` caps BLAS/OpenMP threads (default 1: the heads' matrices are small, and on a shared
    2-core machine extra threads mostly spin; None leaves the libraries' defaults)."""
    with threadpool_limits(n_threads):
        return _sweep(store, model, heads, pooling, tta, seed, repeat, recipe_id, allow_stale, n_boot,
                      head_params, show_progress, protocol)


def _sweep(store, model, heads, pooling, tta, seed, repeat, recipe_id, allow_stale, n_boot, head_params,
           show_progress, protocol) -> pd.DataFrame:
    heads = list(DEFAULT_HEADS) if heads in (None, "all", ["all"]) else list(heads)
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ProtocolError(f"unknown head(s) {unknown}; choose from {sorted(HEADS)} or 'all'")
    feats = load_features(store, model, pooling, tta, recipe_id, allow_stale)  # first: a bad set writes nothing
    proto = protocol or load_protocol(store)  # (persists folds.parquet on first use)
    options = dict(pooling=pooling, views=feats.views, tta=bool(tta))
    out = []
    with progress(total=len(heads) * proto.n_folds, desc=f"probe {model}", unit="fold",
                  enabled=show_progress) as bar:
        for head in heads:
            bar.set_postfix_str(head)
            rows = run_family(store, feats, proto, head, options, (head_params or {}).get(head), seed=seed,
                              repeat=repeat, n_boot=n_boot, progress=bar)
            if rows is None:
                bar.update(proto.n_folds)
            else:
                out.append(rows)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=R.RUN_COLUMNS)
