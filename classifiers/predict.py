"""P(atypical) for every patch of a dataset, from the fold ensemble of one recorded probe family.

The fold models are the family's own, refitted from the stored vectors and checked against the
stored held-out probabilities (``refit``: no pickled model is ever loaded). The ensemble's
probability is the mean of the fold models' (as in the run's fold -1 row), the decision uses the
family's recorded ensemble threshold (chosen on out-of-fold probabilities when it ran).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from mitoprobe.store.dataset import LABELS, POSITIVE_LABEL
from mitoprobe.store.errors import ProtocolError, StoreError

from . import runs as R
from .labels import family_labels
from .refit import refit_family

log = logging.getLogger(__name__)

POSITIVE, NEGATIVE = POSITIVE_LABEL, next(lab for lab in LABELS if lab != POSITIVE_LABEL)  # the store's labels


def choose_family(store, model: str, head: str, family_id: str | None = None) -> str:
    """The family to predict with: ``family_id`` when given, else the newest probe family of
    ``model``/``head`` (others are named in a log line, so the choice is visible)."""
    runs = store.results.read("runs")
    if runs.empty:
        raise StoreError("the store has no probe results yet; run `mitoprobe probe --model "
                         f"{model} --head {head}` first")
    if family_id is not None:
        if family_id not in set(runs["family_id"]):
            raise StoreError(f"no family {family_id!r} in the store's runs; `mitoprobe sql \"select distinct "
                             "family_id, model, head from runs\"` lists them")
        return family_id
    mine = runs[(runs["family"] == R.FAMILY) & (runs["model"] == model) & (runs["head"] == head)]
    if mine.empty:
        raise StoreError(f"no probe family of {model} with head {head} in the store; run `mitoprobe probe --model "
                         f"{model} --head {head}` first")
    newest = mine.groupby("family_id")["created_at"].max().sort_values()
    if len(newest) > 1:
        log.warning("%s/%s has %d probe families; using the newest, %s (pass --family to choose: %s)", model, head,
                    len(newest), newest.index[-1], ", ".join(newest.index[:-1]))
    return newest.index[-1]


def predict_dataset(store, model: str, head: str, dataset: str, family_id: str | None = None) -> pd.DataFrame:
    """One row per patch of ``dataset``: P(atypical) of the fold ensemble, the decision at the family's
    threshold, each fold model's probability, and the family (id and label) / recipe / threshold that made them."""
    mine = store.patches(columns=["patch_id", "relpath", "label"], dataset=dataset)  # its rows, not every cohort's
    if mine.empty:
        stored = sorted({d for e in store.patch_parts.entries() for d in (e.get("datasets") or {})})
        raise StoreError(f"no patches of dataset {dataset!r} in the store (datasets: {stored}); import it with "
                         "`mitoprobe data import --dataset`")
    fam = choose_family(store, model, head, family_id)
    fitted = refit_family(store, fam)
    if fitted.ensemble_threshold is None and len(fitted.folds) != 1:
        raise ProtocolError(f"family {fam} has no fold ensemble row to take a threshold from")
    ids = mine["patch_id"].to_numpy()
    per_fold = fitted.fold_probabilities(ids)
    proba = per_fold.mean(axis=0)
    threshold = fitted.ensemble_threshold if fitted.ensemble_threshold is not None else fitted.folds[0].threshold
    out = pd.DataFrame({
        "patch_id": ids, "dataset": dataset, "relpath": mine["relpath"].to_numpy(),
        "label": mine["label"].to_numpy(),
        "p_atypical": proba, "threshold": threshold,
        "prediction": np.where(proba >= threshold, POSITIVE, NEGATIVE),
    })
    for f, p in zip(fitted.folds, per_fold):
        out[f"p_fold{f.fold}"] = p
        out[f"threshold_fold{f.fold}"] = f.threshold
    out["family_id"] = fam
    out["family_label"] = family_labels(store.results.read("runs")).get(fam, fam)  # as report and dashboard name it
    out["model"] = model
    out["head"] = head
    out["recipe_id"] = fitted.recipe_id
    out["options"] = json.dumps(fitted.options, sort_keys=True)
    out["train_on"] = fitted.train_on
    return out
