"""The probe sweep: for one embedding set, every head x 5 folds x 3 test sets, under the protocol.

For each fold the head's grid is searched on the fold's held-out part (AUROC), the decision threshold
is set by the head's rule on that same held-out part, and the fitted model only *predicts* the test
sets. Test labels enter in ``scoring.score_test_set`` alone, after every choice is made and recorded.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mitoprobe import embedder
from mitoprobe.paper.probe import paper_probe_params
from mitoprobe.store.errors import ConfigError, RecipeError
from mitoprobe.store.hashing import canonical_json
from mitoprobe.store.progress import progress

from . import metrics as M
from . import runs as R
from .features import POOLINGS, Features, current_recipe_id, load_features
from .fitting import SELECTION_RULE, _seeded_params, fit_fold, predict_test_set
from .head_calls import head_code
from .heads import DEFAULT_HEADS, HeadSpec
from .own_heads import estimator_head, is_own_head_spec, own_head, resolve_head
from .protocol import FOLD_SEED, N_FOLDS, PAPER_TRAIN, TEST_SETS, Protocol, load_protocol, save_folds
from .refit import extend_family, missing_test_sets
from .scoring import ENSEMBLE_RULE, fold_ensemble, heldout_frame, prediction_frame, score_test_set

log = logging.getLogger(__name__)

__all__ = ["POOLINGS", "Features", "current_recipe_id", "fit_fold", "load_features", "resolve_heads", "run_family",
           "sweep"]


def resolve_heads(heads=None, *, grid: dict | None = None, name: str | None = None, estimator=None) -> list[HeadSpec]:
    """Every way to name heads, resolved once into ``HeadSpec``s before anything is read or written.

    ``heads``: None or "all" (the default heads), a name, an own head (``module:factory``,
    ``file.py:factory``), a ``HeadSpec``, or a list of these; or ``estimator``: an unfitted scikit-learn
    classifier. ``grid``/``name`` belong to an own head or an estimator (built-in heads search their own)."""
    if estimator is not None:
        if heads is not None:
            raise ConfigError("pass either a head (a name or MODULE:FACTORY) or an estimator, not both")
        return [estimator_head(estimator, name=name, grid=grid)]
    names = list(DEFAULT_HEADS) if heads in (None, "all", ["all"]) else [heads] if isinstance(heads, (str, HeadSpec)) \
        else list(heads)
    own = [h for h in names if is_own_head_spec(h)]
    if (grid is not None or name is not None) and not own:
        raise ConfigError("a grid or a name belongs to your own head (MODULE:FACTORY) or an estimator; built-in heads "
                          "search their own grid (set a value with params / --param)")
    if name is not None and len(own) > 1:
        raise ConfigError(f"one name for {len(own)} own heads: name them one at a time")
    return [own_head(h, grid=grid, name=name) if is_own_head_spec(h) else resolve_head(h) for h in names]


def run_family(store, feats: Features, proto: Protocol, spec: HeadSpec, options: dict,
               params: dict | None = None, seed: int = 0, repeat: bool = False, n_boot: int = M.N_BOOTSTRAP,
               progress=None, exact_seed: bool = False) -> pd.DataFrame | None:
    """One head on one feature set: 5 fold models + the fold ensemble, scored on every test set,
    appended to ``runs``/``predictions``. Returns the run rows (None when skipped as a duplicate).

    ``exact_seed`` (``--seeds``): record a repeat with exactly this seed, unless the family has one already;
    otherwise a repeat ``r`` runs with ``seed + r``.

    ``spec``: the head, resolved once (``resolve_heads``); an own head's source enters the family id."""
    head = spec.name
    params = {**_paper_defaults(head, feats.name), **(params or {})}  # recorded in the config: the family id
    config = dict(family=R.FAMILY, model=feats.name, recipe_id=feats.recipe_id, head=head, options=options,
                  params=params, grid=list(spec.grid), selection_rule=SELECTION_RULE,
                  threshold_rule=spec.threshold_rule, code_version=R.code_version(),
                  protocol=protocol_record(proto),
                  n_boot=n_boot)
    if spec.source is not None:  # an own head: its code's identity (an edited file is another family)
        config["head_source"] = spec.source.identity()
    fam = R.family_id(config)
    # One writer per family: "stored yet?" is asked under the lock, so a second job started together waits,
    # then finds the first one's rows and skips (never appends them twice).
    with R.family_lock(store, fam, f"{feats.name}/{head} ({fam})"):
        return _run_family(store, feats, proto, spec, head, options, params, config, fam, seed, repeat, n_boot,
                           progress, exact_seed)


def _run_family(store, feats: Features, proto: Protocol, spec, head: str, options: dict, params: dict,
                config: dict, fam: str, seed: int, repeat: bool, n_boot: int, progress,
                exact_seed: bool = False) -> pd.DataFrame | None:
    rep = R.next_repeat(store, fam)
    if exact_seed and rep is not None:
        if seed in R.recorded_seeds(store, fam):
            log.info("skipping %s/%s seed %d: already in runs (family %s)", feats.name, head, seed, fam)
            return None
        repeat = True
    if rep is not None and not repeat:
        new_sets = missing_test_sets(store, fam, proto.tests)
        if new_sets:  # e.g. a cohort imported since: scored by the family's own (refitted, checked) fold models
            log.info("%s/%s: scoring %s with family %s's fold models", feats.name, head, new_sets, fam)
            return extend_family(store, fam, {n: proto.tests[n] for n in new_sets}, n_boot)
        log.info("skipping %s/%s %s: already in runs (family %s); pass repeat=True to record a repeat",
                 feats.name, head, options, fam)
        return None
    rep = rep or 0
    run_seed = seed if exact_seed else seed + rep
    est_params = _seeded_params(spec, params, run_seed)
    train_ids = proto.train["patch_id"].array  # Arrow-backed: no Python string per patch
    # the training patches' rows first: each fold's then move up in place for its fit (no copy of them)
    train_at = feats.put_first(feats.locate(train_ids))
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
        fit = fit_fold(spec, est_params, feats, fd, train_at)
        oof[fd.val_idx] = fit["val_proba"]
        rid = R.run_id(fam, k, rep)
        preds.append(heldout_frame(rid, train_ids[fd.val_idx], k, fit["val_proba"], fit["threshold"]))
        cfg = dict(config, fold=k, seed=run_seed, selected=fit["chosen"], tried=fit["tried"],
                   estimator=_jsonable_params(spec, fit["estimator"], k))
        if spec.source is not None:  # where to import it again (predict); machine-specific, so not in the family id
            cfg["head_where"] = spec.source.where
        for name, ts in proto.tests.items():
            p, secs = predict_test_set(spec, fit["estimator"], feats, ts, f"fold {k}, test set {name}")
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
    save_folds(store, proto)  # the paper's folds, saved with the first rows that use them (not before)
    R.append(store, runs, preds)
    return pd.DataFrame(runs)


def protocol_record(proto: Protocol) -> dict:
    """What the family id records of the protocol: the folds, the benchmark test sets it scores and,
    when not the paper's, the dataset it trains on. A user's extra test sets are left out, so importing
    a cohort does not change any family id (its test set is added to the existing families' rows)."""
    rec = dict(n_folds=N_FOLDS, fold_seed=FOLD_SEED, test_sets=sorted(n for n in proto.tests if n in TEST_SETS))
    if proto.train_on != PAPER_TRAIN:
        rec["train_on"] = proto.train_on
    return rec


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


def _jsonable_params(spec: HeadSpec, est, fold: int) -> dict:
    if not hasattr(est, "get_params"):  # an own head need not be a scikit-learn BaseEstimator
        return {}
    with head_code(spec, f"fold {fold}", "get_params"):
        params = est.get_params(deep=True)
    return json.loads(canonical_json({k: v for k, v in params.items()
                                      if not hasattr(v, "get_params") and k != "steps"}))


def sweep(store, model: str, heads=None, pooling: str = "all", tta: bool = False, seed: int = 0,
          repeat: bool = False, recipe_id: str | None = None, allow_stale: bool = False,
          n_boot: int = M.N_BOOTSTRAP, head_params: dict | None = None, show_progress: bool = True,
          protocol: Protocol | None = None, n_threads: int | None = 1, train_on: str = PAPER_TRAIN,
          seeds: list[int] | None = None, features: Features | None = None) -> pd.DataFrame:
    """Run every head on one model's stored vectors; returns the new run rows (skipped heads absent).

    ``seeds``: run each head once per seed (repeats of one family; the report gives the spread over seeds
    beside the spread over folds); seeds already recorded are skipped.

    ``train_on``: the dataset whose ``split=train`` patches are the 5 slide-grouped folds (the paper:
    AMi-Br; another is a named protocol option, recorded in the family). A family that already ran is
    skipped, except that test sets it has not scored yet (a cohort imported since) are scored by its
    own fold models (``refit.extend_family``).

    ``heads``: anything ``resolve_heads`` takes. ``features``/``protocol``: the vectors and protocol already
    loaded (the Python API keeps them between calls), else read here.

    ``n_threads`` caps BLAS/OpenMP threads (default 1: the heads' matrices are small, and on a shared
    2-core machine extra threads mostly spin; None leaves the libraries' defaults)."""
    with threadpool_limits(n_threads):
        return _sweep(store, model, heads, pooling, tta, seed, repeat, recipe_id, allow_stale, n_boot,
                      head_params, show_progress, protocol, train_on, seeds, features)


def _sweep(store, model, heads, pooling, tta, seed, repeat, recipe_id, allow_stale, n_boot, head_params,
           show_progress, protocol, train_on, seeds=None, features=None) -> pd.DataFrame:
    specs = resolve_heads(heads)  # own heads imported and checked here, before any write
    # first: a bad set writes nothing
    feats = features if features is not None else load_features(store, model, pooling, tta, recipe_id, allow_stale)
    # computed, not saved yet: a family that fails (an own head's fault in fold 3) leaves no folds.parquet either
    proto = protocol or load_protocol(store, train_on=train_on, create=False)
    options = dict(pooling=pooling, views=feats.views, tta=bool(tta))
    out = []
    runs_of = [(head, s) for head in specs for s in (seeds or [seed])]
    with progress(total=len(runs_of) * proto.n_folds, desc=f"probe {model}", unit="fold",
                  enabled=show_progress) as bar:
        for head, s in runs_of:
            bar.set_postfix_str(head.name if not seeds else f"{head.name} seed {s}")
            rows = run_family(store, feats, proto, head, options, (head_params or {}).get(head.name), seed=s,
                              repeat=repeat, n_boot=n_boot, progress=bar, exact_seed=bool(seeds))
            if rows is None:
                bar.update(proto.n_folds)
            else:
                out.append(rows)
    save_folds(store, proto)  # a probe that succeeds saves them, even when every family was stored already
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=R.RUN_COLUMNS)
