"""The name of a fine-tuned fold's embedding set, ``ft-<run8>-fold<k>.<sha8>``, made and read in one place.

timm's ``arch.tag`` scheme: the run key's first 8 hex digits, the fold whose checkpoint it is, and the
checkpoint's sha256 prefix as the tag (new weights, new name). ``finetune.registry`` makes it;
``classifiers`` recognise it (a fold set is probed under its own fold only) and pool the five folds'
sets into one report row, ``ft-<run8>-folds``.
"""

from __future__ import annotations

import re

_FOLD_TAG = r"-fold(?P<fold>\d+)\.(?P<sha>[0-9a-f]{8})"
FINETUNED_SET = re.compile(rf"^ft-(?P<run>[0-9a-f]{{8}}){_FOLD_TAG}$")  # groups: run, fold, sha
_FOLD_TAG_ANYWHERE = re.compile(_FOLD_TAG)


def finetuned_set_name(run_key: str, fold: int, checkpoint_sha256: str) -> str:
    """``ft-<run8>-fold<k>.<sha8>``: the embedding set of fold ``fold``'s checkpoint of run ``run_key``."""
    return f"ft-{run_key[:8]}-fold{int(fold)}.{checkpoint_sha256[:8]}"


def pooled_set_name(run_key: str) -> str:
    """``ft-<run8>-folds``: the report row (and fusion member) pooling the fold sets of run ``run_key``."""
    return f"ft-{run_key[:8]}-folds"


def is_finetuned_set(name) -> bool:
    """Whether ``name`` is a fine-tuned fold set (each was trained on four folds: no general default)."""
    return bool(FINETUNED_SET.match(str(name)))


def pooled_model_name(model: str) -> str:
    """Fine-tuned fold sets (each probed under its own fold only) pool into one row ``ft-<run>-folds``, so
    the report shows the mean over the five fold models like any other; ``+``-joined names pool alike."""
    return _FOLD_TAG_ANYWHERE.sub("-folds", model)
