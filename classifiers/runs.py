"""The schema of the ``runs`` and ``predictions`` tables, and how rows get into them.

``runs``: one row per run (model x head x options x fold x repeat) **and test set**; the 5 fold rows
of one configuration share a ``family_id``; ``fold = -1`` is the fold ensemble (mean of the five
fold models' probabilities). Agreement with the experts is stored in the same rows
(``kappa_expert1..5``, NaN where a test set has no such expert) so one table answers everything.

Re-running an identical configuration (same ``family_id``: model, recipe id, head, options,
hyper-parameter grid, rules, code version) is **skipped**; ``repeat=True`` records it again as
``repeat = previous + 1`` with ``seed = base seed + repeat``. Nothing is ever overwritten: each sweep
appends new Parquet parts through ``store.results``.

One writer per family: every writer holds :func:`family_lock` from "is this family stored yet?" to
its append, so two jobs started together on the same family append its rows once (the second waits,
then finds them stored).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from mitoprobe.store import schema
from mitoprobe.store.hashing import config_hash, source_version
from mitoprobe.store.integrity import preflight
from mitoprobe.store.lock import SetLock

log = logging.getLogger(__name__)

FAMILY = "probe"
# The columns (and types) of both tables live in ``store.schema``; the store validates every append.
RUN_COLUMNS = list(schema.RUN_COLUMNS)
PREDICTION_COLUMNS = list(schema.PREDICTION_COLUMNS)


# Fine-tuning rows appended before the per-model paper table (issue 20) said ``options = {}`` ("the paper's
# settings") while most models had trained under Virchow2's settings. Their config has no ``paper_entry``;
# ``relabel_legacy_finetune`` shows them with this option instead, at read time (nothing is rewritten).
LEGACY_FINETUNE_OPTIONS = '{"settings": "pre-table defaults (not the script\'s)"}'


def relabel_legacy_finetune(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the legacy fine-tuning rows that claimed paper settings relabelled (see above)."""
    if runs.empty or "config_json" not in runs:
        return runs
    legacy = (runs["family"] == "finetune") & (runs["options"] == "{}") & \
        ~runs["config_json"].fillna("").str.contains('"paper_entry"', regex=False)
    if not legacy.any():
        return runs
    runs = runs.copy()
    runs.loc[legacy, "options"] = LEGACY_FINETUNE_OPTIONS
    return runs


def read_runs(store) -> pd.DataFrame:
    """The ``runs`` table as reports show it (legacy fine-tuning rows relabelled)."""
    return relabel_legacy_finetune(store.results.read("runs"))


def code_version() -> str:
    """Package version + a digest of the classifiers' source: results from changed code never mix."""
    return source_version(Path(__file__).parent)


def family_id(config: dict) -> str:
    """Hash of a configuration without fold, seed or repeat."""
    return config_hash({k: v for k, v in config.items() if k not in ("fold", "seed", "repeat")})


def run_id(fam: str, fold: int, repeat: int) -> str:
    return config_hash({"family_id": fam, "fold": int(fold), "repeat": int(repeat)})


def next_repeat(store, fam: str) -> int | None:
    """None when the family has never run; otherwise the next repeat index."""
    runs = store.results.read("runs")
    if runs.empty or "family_id" not in runs:
        return None
    done = runs.loc[runs["family_id"] == fam, "repeat"]
    return None if done.empty else int(done.max()) + 1


# How long a writer waits for another job holding the same family (then StoreLockedError, exit 2,
# naming it); MITOPROBE_LOCK_WAIT (seconds) overrides it, 0 = fail at once.
LOCK_WAIT_S = 3600.0


def lock_wait_s() -> float:
    value = os.environ.get("MITOPROBE_LOCK_WAIT", "").strip()
    try:
        return max(0.0, float(value)) if value else LOCK_WAIT_S
    except ValueError:
        return LOCK_WAIT_S


@contextlib.contextmanager
def family_lock(store, family_id: str, label: str | None = None, wait_s: float | None = None) -> Iterator[SetLock]:
    """Hold the write lock of one family's result rows (``store/lock.py``; re-entrant in a process).

    Take it *before* checking whether the family is stored, and append inside it. Another live job
    holding it is waited for (``wait_s``, default :func:`lock_wait_s`), with one warning naming it;
    after that, :class:`StoreLockedError` naming the holder (the CLI exits 2)."""
    lock = store.results.lock(family_id, label)
    wait = lock_wait_s() if wait_s is None else wait_s
    lock.acquire(wait_s=wait, on_wait=lambda who: log.warning(
        "%s is being written by %s; waiting for it (up to %g s; MITOPROBE_LOCK_WAIT sets the limit)",
        lock.label, who, wait))
    try:
        yield lock
    finally:
        lock.release()


def recorded_seeds(store, fam: str) -> set[int]:
    """The seeds a family's repeats ran with."""
    runs = store.results.read("runs", columns=["family_id", "seed"]) if store.results.parts("runs") else pd.DataFrame()
    return set(runs.loc[runs["family_id"] == fam, "seed"].astype(int)) if len(runs) else set()


def append(store, runs: list[dict], predictions: list[pd.DataFrame]) -> None:
    """Append one family's rows (predictions first, so a run row never lacks its predictions); refused,
    writing nothing, on a damaged store (``integrity.preflight``: results computed from it are wrong)."""
    preflight(store, results=True, folds=True)
    if predictions:  # one part, a row group per frame: never the whole family's predictions concatenated
        store.results.append("predictions", [p[PREDICTION_COLUMNS] for p in predictions])
    df = pd.DataFrame(runs)
    for c in RUN_COLUMNS:
        if c not in df:
            df[c] = np.nan
    df["created_at"] = pd.Timestamp(time.time(), unit="s", tz="UTC")
    store.results.append("runs", df[RUN_COLUMNS])
