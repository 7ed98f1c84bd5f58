"""The fold models of a recorded probe family, refitted deterministically from the stored vectors.

Why refit instead of saving fitted heads: a fitted head is a pickle (sklearn) or needs one (the
wrappers around LightGBM and torch), and loading a pickle a user did not make runs arbitrary code.
A probe is seconds of CPU, and everything it depends on is recorded: the family's config (head,
parameters, the grid point chosen per fold, the seed, pooling and views), the recipe id of its
vectors and the folds. So the fold models are fitted again, one grid point each, and then *checked*:
the refit's held-out probabilities must equal the ones stored when the family ran (``predictions``,
``split = "val"``), else the refit is refused (vectors, folds or libraries changed). A checked refit
is the same model, used to score a test set added later (``extend_family``) and by ``predict``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from mitoprobe.store.errors import ProtocolError, StaleFeaturesError, StoreError
from mitoprobe.store.keys import positions

from . import runs as R
from .features import Features, load_features
from .fitting import _seeded_params, fit_fold, predict_test_set
from .heads import HeadSpec
from .own_heads import head_from_record, resolve_head
from .protocol import PAPER_TRAIN, Protocol, TestSet, load_protocol, save_folds
from .scoring import prediction_frame, score_test_set

REFIT_TOLERANCE = 1e-6  # max |p_refit - p_stored| on a fold's held-out patches


@dataclass
class FittedFold:
    fold: int
    run_id: str
    estimator: object
    threshold: float


@dataclass
class FittedFamily:
    """A probe family's fold models (refitted and checked) and its recorded thresholds."""

    family_id: str
    model: str
    head: str
    recipe_id: str
    repeat: int
    options: dict
    feats: Features
    folds: list[FittedFold]
    ensemble_run_id: str | None
    ensemble_threshold: float | None
    train_on: str = PAPER_TRAIN
    runs: pd.DataFrame | None = None  # the family's run rows (latest repeat) the refit was read from
    spec: HeadSpec | None = None  # the head (its name and, for an own head, its source: how its faults are told)
    proto: Protocol | None = None  # the folds the family was refitted under

    def fold_probabilities(self, patch_ids) -> np.ndarray:
        """(n_folds, n_patches) P(atypical) of every fold model (views averaged as in the run)."""
        ts = TestSet("query", np.asarray(patch_ids), np.zeros(len(patch_ids), np.int64), pd.DataFrame())
        return np.vstack([predict_test_set(self.spec, f.estimator, self.feats, ts,
                                           f"fold {f.fold} refitted, the patches to predict")[0] for f in self.folds])


def family_runs(store, family_id: str) -> pd.DataFrame:
    """The run rows of a family's latest repeat; StoreError when the family is unknown."""
    runs = store.results.read("runs")
    mine = runs[runs["family_id"] == family_id] if not runs.empty else runs
    if mine.empty:
        raise StoreError(f"no family {family_id!r} in the store's runs; `mitoprobe sql \"select distinct family_id, "
                         "model, head from runs\"` lists them")
    return mine[mine["repeat"] == mine["repeat"].max()]


def stored_predictions(store, run_ids: list[str], split: str | None = None,
                       columns: list[str] | None = None, patch_id: str | None = None) -> pd.DataFrame:
    """The ``predictions`` rows of ``run_ids`` (of ``split`` only, of one patch only, ``columns`` only, when
    given), filtered in Arrow a batch at a time: never the whole table, nor a whole part (a cohort's family
    holds ~400,000 rows; read in DuckDB and copied to pandas they added ~114 MiB to the peak at 200,000 patches),
    and row groups of other runs or splits are not read (their statistics say so)."""
    ids = pa.array(list(run_ids), pa.string())

    def mine(t: pa.Table) -> pa.Array:
        keep = pc.is_in(t["run_id"], value_set=ids.cast(t["run_id"].type))
        if patch_id is not None:
            keep = pc.and_(keep, pc.equal(t["patch_id"], patch_id))
        if split is None:
            return keep
        if "split" not in t.column_names:  # a part written before held-out rows: every row is a test row
            return keep if split == "test" else pa.array(np.zeros(t.num_rows, bool))
        return pc.and_(keep, pc.equal(pc.fill_null(t["split"], "test"), split))

    filtered_on = ["run_id", "split", *(["patch_id"] if patch_id is not None else [])]  # for ``mine``; returned if asked
    df = store.results.read("predictions", list(dict.fromkeys([*(columns or R.PREDICTION_COLUMNS), *filtered_on])),
                            where=mine, only={"run_id": list(run_ids), **({"split": [split]} if split else {})})
    df["split"] = df["split"].fillna("test")
    return df if columns is None else df[columns]


def refit_family(store, family_id: str) -> FittedFamily:
    """The family's fold models, refitted from the stored vectors and checked against the stored
    held-out probabilities (``REFIT_TOLERANCE``). Refuses families that are not probes (fine-tuning,
    fusions), vectors made by another recipe id, and refits that do not reproduce the stored run."""
    rows = family_runs(store, family_id)
    fam = rows["family"].iloc[0]
    if fam != R.FAMILY:
        raise ProtocolError(f"family {family_id} is a {fam!r} family, not a probe: only probe families can be "
                            "refitted from stored vectors (probe the vectors of a fine-tuned fold instead)")
    folds = rows[rows["fold"] >= 0].drop_duplicates("fold").sort_values("fold")
    cfg0 = json.loads(folds["config_json"].iloc[0])
    model, head, recipe_id = cfg0["model"], cfg0["head"], cfg0["recipe_id"]
    # an own head is imported again from where it was; refused when its code changed since the run
    spec = head_from_record(cfg0["head_source"], cfg0.get("head_where", "")) if "head_source" in cfg0 \
        else resolve_head(head)
    options = cfg0.get("options", {})
    try:
        feats = load_features(store, model, options.get("pooling", "all"), bool(options.get("tta", False)))
    except StaleFeaturesError as exc:
        raise StaleFeaturesError(f"family {family_id} ({model}/{head}) was fitted on vectors that are no longer "
                                 f"current: {exc}") from exc
    if feats.recipe_id != recipe_id:
        raise StaleFeaturesError(f"family {family_id} ({model}/{head}) was fitted on recipe id {recipe_id}, the "
                                 f"stored vectors now have {feats.recipe_id}: probe them again (`mitoprobe probe "
                                 f"--model {model} --head {head}`)")
    train_on = cfg0.get("protocol", {}).get("train_on", PAPER_TRAIN)
    proto = load_protocol(store, train_on=train_on, create=False)  # the folds the family was fitted under
    train_ids = proto.train["patch_id"].array  # Arrow-backed: no Python string per patch
    # the training patches' rows first: each fold's then move up in place for its fit (no copy of them)
    train_at = feats.put_first(feats.locate(train_ids))
    stored_val = stored_predictions(store, folds["run_id"].tolist(), split="val",
                                    columns=["run_id", "patch_id", "probability"])
    expected = {int(r["fold"]): _stored_heldout(family_id, int(r["fold"]), r["run_id"],
                                                train_ids[proto.fold_data(int(r["fold"])).val_idx], stored_val)
                for _, r in folds.iterrows()}  # aligned numbers: the rows themselves are not held while fitting
    del stored_val
    fitted = []
    with threadpool_limits(1):  # as the sweep fits (its default n_threads)
        for _, r in folds.iterrows():
            cfg = json.loads(r["config_json"])
            k = int(r["fold"])
            params = _seeded_params(spec, cfg.get("params", {}), int(cfg["seed"]))
            fit = fit_fold(spec, params, feats, proto.fold_data(k), train_at, points=[cfg.get("selected", {})])
            _check_reproduced(family_id, k, expected[k], fit["val_proba"])
            fitted.append(FittedFold(k, r["run_id"], fit["estimator"], float(r["threshold"])))
    ens = rows[rows["fold"] == -1]
    return FittedFamily(family_id, model, head, recipe_id, int(rows["repeat"].iloc[0]), options, feats, fitted,
                        None if ens.empty else ens["run_id"].iloc[0],
                        None if ens.empty else float(ens["threshold"].iloc[0]), train_on, rows, spec, proto)


def _stored_heldout(family_id: str, fold: int, run_id: str, val_ids, stored_val: pd.DataFrame) -> np.ndarray:
    """The fold's stored held-out probabilities in ``val_ids``' order (NaN where one is missing)."""
    got = stored_val[stored_val["run_id"] == run_id]
    if got.empty:
        raise StoreError(f"family {family_id} fold {fold}: no stored held-out probabilities to check a refit "
                         "against (the family was run by an older mitoprobe); probe it again with --repeat")
    at = positions(val_ids, got["patch_id"])  # an Arrow lookup: no Python string per patch
    return np.where(at >= 0, got["probability"].to_numpy(dtype=float)[at], np.nan)


def _check_reproduced(family_id: str, fold: int, stored: np.ndarray, p_refit: np.ndarray) -> None:
    if np.isnan(stored).any() or np.max(np.abs(stored - p_refit)) > REFIT_TOLERANCE:
        diff = np.nanmax(np.abs(stored - p_refit)) if not np.isnan(stored).all() else float("nan")
        raise StoreError(f"family {family_id} fold {fold}: refitting from the stored vectors does not reproduce the "
                         f"recorded model (held-out probabilities differ by up to {diff:.2e}; folds, vectors or "
                         "library versions changed). Probe the model again (`mitoprobe probe --repeat`)")


def missing_test_sets(store, family_id: str, tests: dict[str, TestSet]) -> list[str]:
    """Test sets in ``tests`` that the family's latest repeat has not scored (e.g. a cohort imported later)."""
    done = set(family_runs(store, family_id)["test_set"])
    return [name for name in tests if name not in done]


def extend_family(store, family_id: str, tests: dict[str, TestSet], n_boot: int) -> pd.DataFrame:
    """Score test sets the family has not scored yet with its own fold models (refitted and checked)
    and fold ensemble threshold; appends run and prediction rows under the family's run ids, so the
    family's rows on the other test sets are untouched (bootstrap seeded with the family's seed).
    Returns the new run rows (none when another job scored them meanwhile: checked under the family's
    lock, which ``run_family`` already holds)."""
    with R.family_lock(store, family_id):
        todo = missing_test_sets(store, family_id, tests)
        if not todo:
            return pd.DataFrame(columns=R.RUN_COLUMNS)
        return _extend_family(store, family_id, {n: tests[n] for n in todo}, n_boot)


def _extend_family(store, family_id: str, tests: dict[str, TestSet], n_boot: int) -> pd.DataFrame:
    fitted = refit_family(store, family_id)
    rows = fitted.runs
    base_cols = ["family_id", "family", "model", "recipe_id", "head", "options", "code_version", "seed", "repeat",
                 "threshold_rule", "config_json", "val_auroc", "val_balanced_accuracy", "n_train", "threshold"]
    runs, preds, fold_p = [], [], []
    for f in fitted.folds:
        base = rows[rows["run_id"] == f.run_id].iloc[0][base_cols].to_dict()
        probs = {}
        for name, ts in tests.items():
            p, secs = predict_test_set(fitted.spec, f.estimator, fitted.feats, ts,
                                       f"fold {f.fold} refitted, test set {name}")
            probs[name] = p
            runs.append(dict(base, run_id=f.run_id, fold=f.fold, test_set=name, fit_seconds=0.0, predict_seconds=secs,
                             **score_test_set(ts, p, f.threshold, n_boot, int(base["seed"]))))
            preds.append(prediction_frame(f.run_id, ts, f.fold, p, f.threshold))
        fold_p.append(probs)
    if fitted.ensemble_run_id is not None and len(fitted.folds) > 1:
        base = rows[rows["run_id"] == fitted.ensemble_run_id].iloc[0][base_cols].to_dict()
        for name, ts in tests.items():
            p = np.mean([fp[name] for fp in fold_p], axis=0)
            runs.append(dict(base, run_id=fitted.ensemble_run_id, fold=-1, test_set=name, fit_seconds=0.0,
                             predict_seconds=0.0, **score_test_set(ts, p, fitted.ensemble_threshold, n_boot,
                                                                   int(base["seed"]))))
            preds.append(prediction_frame(fitted.ensemble_run_id, ts, -1, p, fitted.ensemble_threshold))
    save_folds(store, fitted.proto)  # (refitting saves nothing: the folds go with the rows they made)
    R.append(store, runs, preds)
    return pd.DataFrame(runs)
