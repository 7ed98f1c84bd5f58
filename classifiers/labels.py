"""Short, stable names for run families: what the report, ``report --compare``, ``predict`` and every
dashboard page show a person, computed in one place (:func:`family_label`).

* A name the user gave (``mitoprobe fuse --name``, ``mitoprobe finetune --name``): a fusion keeps it in
  its run rows' ``options`` (not in the hashed config, so it never changes the family id); a fine-tuning
  run in its ``config.json`` (written once, when the run starts; only a named run's id sees it).
* Otherwise derived from the row, never from anything that changes later:

  - probe: ``model · head`` and the options that are not the defaults (``handcrafted · lgbm``,
    ``uni.hf · logreg · pooling=cls, tta=True``);
  - fusion: ``fuse:<rule>(<members joined by +>)`` when that is short, else
    ``fuse:<rule>(<n> members) <family id[:6]>``;
  - fine-tuning: ``ft <model> <method> <run key[:8]>``.

:func:`family_labels` gives every family of a runs table its label, made unique (a repeated label gets
its family id's first characters), for pickers and tables keyed by family id.
"""

from __future__ import annotations

import json
import re

import pandas as pd

from mitoprobe.paper.naming import is_finetuned_set  # noqa: F401  (re-exported: the dashboard's picker)
from mitoprobe.store.errors import ProtocolError
from mitoprobe.store.hashing import canonical_json

from .runs import LEGACY_FINETUNE_OPTIONS

# A probe's options at their defaults say nothing in a label (``mitoprobe probe``: every output, one view).
PROBE_DEFAULTS = {"pooling": "all"}
MAX_NAME = 40  # a user's --name: short enough for the report's label column
MAX_FUSION_TEXT = 44  # a derived fusion label listing its members, at most this long (fits the report)
_NAME_OK = re.compile(r"^[^\x00-\x1f\x7f]+$")


def check_name(name: str | None) -> str | None:
    """A user's display name, stripped; None when not given. ProtocolError when empty, too long or
    holding a control character."""
    if name is None:
        return None
    text = str(name).strip()
    if not text or len(text) > MAX_NAME or not _NAME_OK.match(text):
        raise ProtocolError(f"--name {name!r}: give 1 to {MAX_NAME} printable characters (a label for tables, "
                            "e.g. cnn+morphology)")
    return text


def _json(text) -> dict:
    if isinstance(text, dict):
        return text
    try:
        out = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def options_text(options, defaults: dict | None = None) -> str:
    """A run's options JSON as 'key=value, ...' (empty values, a display name and values equal to
    ``defaults`` left out): how people read a family."""
    try:
        opts = json.loads(options) if isinstance(options, str) and options else {}
    except ValueError:
        return str(options)
    if not isinstance(opts, dict):
        return str(opts)

    def text(v):
        return "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    defaults = defaults or {}
    return ", ".join(f"{k}={text(v)}" for k, v in sorted(opts.items())
                     if k != "name" and v not in (None, "", False, "none", ["none"], ("none",))
                     and not (k in defaults and v == defaults[k]))


def without_name(options):
    """A run's options JSON without its display name (how families are grouped: naming one does not make
    it another); anything else unchanged."""
    if not isinstance(options, str) or '"name"' not in options:
        return options
    opts = _json(options)
    if "name" not in opts:
        return options
    return canonical_json({k: v for k, v in opts.items() if k != "name"})


def _get(row, key):
    v = row.get(key) if hasattr(row, "get") else None
    return None if v is None or (isinstance(v, float) and v != v) else v


def given_name(row) -> str | None:
    """The name a user gave the family: ``options["name"]`` (fusion) or ``config_json["name"]``
    (fine-tuning), else None."""
    for col in ("options", "config_json"):
        name = _json(_get(row, col)).get("name")
        if isinstance(name, str) and name.strip():
            return name.strip()
    return None


def _fusion_label(row) -> str:
    options = _json(_get(row, "options"))
    rule = (_get(row, "head") or "fusion") + (f"@{options['threshold']}" if options.get("threshold") else "")
    members = options.get("members") or []
    text = f"fuse:{rule}({'+'.join(map(str, members))})"
    if members and len(text) <= MAX_FUSION_TEXT:
        return text
    fid = str(_get(row, "family_id") or "")[:6]
    n = len(members) or "?"
    return f"fuse:{rule}({n} members)" + (f" {fid}" if fid else "")


def _finetune_label(row) -> str:
    """``ft <model> <method> <run8>``, then ``(paper)`` when the run has exactly its model's script settings,
    or ``(pre-table)`` for a run stored before the per-model table that claimed them (``runs.read_runs``)."""
    cfg = _json(_get(row, "config_json"))
    run = str(cfg.get("run_key") or _get(row, "family_id") or "")[:8]
    label = " ".join(str(p) for p in ("ft", _get(row, "model"), _get(row, "head"), run) if p)
    options = _get(row, "options")
    if options == LEGACY_FINETUNE_OPTIONS:
        return f"{label} (pre-table)"
    if options in ("{}", {}) and (cfg.get("paper_entry") or {}).get("script"):
        return f"{label} (paper)"
    return label


def family_label(row) -> str:
    """The short, stable label of one run family from any of its run rows (a dict or a Series with
    family, model, head, options, and where known config_json and family_id)."""
    name = given_name(row)
    if name:
        return name
    fam = _get(row, "family")
    if fam == "fusion":
        return _fusion_label(row)
    if fam == "finetune":
        return _finetune_label(row)
    opts = options_text(_get(row, "options"), PROBE_DEFAULTS if fam in (None, "probe") else None)
    parts = [str(_get(row, "model")), str(_get(row, "head"))] + ([opts] if opts else [])
    if isinstance(fam, str) and fam and fam != "probe":
        parts.append(fam)
    return " · ".join(parts)


def unique_labels(labels: dict[str, str]) -> dict[str, str]:
    """family_id -> label, a label shared by several families followed by each one's id prefix."""
    counts = pd.Series(list(labels.values()), dtype=object).value_counts()
    return {fid: (f"{lab} #{str(fid)[:6]}" if counts.get(lab, 0) > 1 else lab) for fid, lab in labels.items()}


def family_labels(runs: pd.DataFrame) -> dict[str, str]:
    """family_id -> its label (:func:`family_label`), unique across ``runs``."""
    if runs is None or runs.empty or "family_id" not in runs:
        return {}
    first = runs.drop_duplicates("family_id")
    return unique_labels({r["family_id"]: family_label(r) for _, r in first.iterrows()})


def label_of(runs: pd.DataFrame, family_id: str, model: str | None = None) -> str:
    """The label of ``family_id`` from its first row in ``runs``; ``model``: show this model name instead
    (``ft-<run>-folds``, the pooled fine-tuned fold sets)."""
    hit = runs[runs["family_id"] == family_id]
    if hit.empty:
        return str(family_id)
    row = hit.iloc[0].to_dict()
    return family_label({**row, "model": model} if model else row)


__all__ = ["MAX_NAME", "check_name", "family_label", "family_labels", "given_name",
           "is_finetuned_set", "label_of", "options_text", "unique_labels", "without_name"]
