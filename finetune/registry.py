"""Fine-tuned fold checkpoints as embedders: ``mitoprobe embed --model ft:<run>/fold<k>``.

The recipe is the base recipe plus the fine-tuning identity (method, LoRA settings, fold, and the
checkpoint's sha256), so its id changes whenever the checkpoint does. Its canonical name is
``ft-<run8>-fold<k>.<sha8>`` (timm's ``arch.tag`` scheme, the tag naming the weights).

**Cross-fold leakage.** Fold k's checkpoint was trained on the other four folds and early-stopped on
fold k, so its features are only valid under fold k's split: probed under fold j != k, the held-out
part (fold j) would be data the backbone was trained on. The recipe carries ``finetune_fold = k``
into the embedding set's provenance (``recipe.json``), and the classifiers' runner reads it and fits
and scores fold k only (no fold ensemble), refusing any other fold.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from mitoprobe.embedder.recipes import Recipe, get_recipe, register
from mitoprobe.paper.finetune import NORM_STATS
from mitoprobe.paper.naming import FINETUNED_SET, finetuned_set_name
from mitoprobe.store import Store
from mitoprobe.store.errors import RecipeError, WeightsError
from mitoprobe.store.hashing import file_sha256

from .config import FinetuneConfig
from .model import add_lora
from .train import DONE_FILE, MODEL_FILE

FINETUNE_DIR = "finetune"  # <store>/finetune/<run_key>/: one folder per fine-tuning run


def runs_root(st: Store) -> Path:
    return st.root / FINETUNE_DIR


_ALIAS = re.compile(r"^ft:(?P<run>[0-9a-f]{4,})/fold(?P<fold>\d+)$")


@dataclass(frozen=True)
class FinetunedRecipe(Recipe):
    """A base recipe with a fine-tuned fold checkpoint applied on top (``adapt_backbone``)."""

    base: str = ""
    method: str = "lora"
    finetune_fold: int = -1
    run_key: str = ""
    lora: tuple = ()  # (r, alpha, dropout, targets)
    checkpoint_sha256: str = ""
    checkpoint: str = field(default="", compare=False)  # local path: machine-specific, not identity

    def identity(self) -> dict:
        d = super().identity()
        d.pop("checkpoint", None)
        return d

    def adapt_backbone(self, backbone):
        """Put the checkpoint's backbone tensors (LoRA adapters, or all weights) on ``backbone``."""
        from safetensors.torch import load_file

        path = Path(self.checkpoint)
        if not path.is_file():
            raise WeightsError(f"{self.name}: checkpoint {path} is missing")
        if file_sha256(path) != self.checkpoint_sha256:
            raise WeightsError(f"{self.name}: {path} changed since it was registered (sha256 differs)")
        if self.method == "lora":
            r, alpha, dropout, targets = self.lora
            add_lora(backbone, FinetuneConfig(model=self.base, lora_r=r, lora_alpha=alpha, lora_dropout=dropout,
                                              lora_targets=tuple(targets)))
        sd = {k.removeprefix("backbone."): v for k, v in load_file(str(path)).items() if k.startswith("backbone.")}
        missing, unexpected = backbone.load_state_dict(sd, strict=False)
        if unexpected or (self.method == "full" and missing):
            raise WeightsError(f"{path}: does not fit {self.base} (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return backbone.eval()


def _find_run(st: Store, run: str) -> Path:
    root = runs_root(st)
    hits = sorted(d for d in root.glob(f"{run}*") if (d / "config.json").is_file()) if root.is_dir() else []
    if len(hits) != 1:
        what = "no" if not hits else "several"
        raise RecipeError(f"{what} fine-tuning runs under {root} match {run!r}; `mitoprobe finetune --list` shows them")
    return hits[0]


def finetuned_recipe(store: Store | str | Path | None, name: str, run_dir: str | Path | None = None) -> Recipe:
    """The recipe of ``ft:<run>/fold<k>`` (or its canonical name), registered in this process."""
    st = store if isinstance(store, Store) else Store(store)
    m = _ALIAS.match(name) or FINETUNED_SET.match(name)
    if m is None:
        raise RecipeError(f"{name!r} is not a fine-tuned embedder; use ft:<run>/fold<k> (e.g. ft:1a2b3c4d/fold0)")
    rd = Path(run_dir) if run_dir else _find_run(st, m["run"])
    k = int(m["fold"])
    done = rd / f"fold{k}" / DONE_FILE
    if not done.is_file():
        raise RecipeError(f"fold {k} of run {rd.name} is not finished ({done} missing); train it first")
    rec = json.loads(done.read_text())
    conf = json.loads((rd / "config.json").read_text())
    sha = rec["checkpoint_sha256"]
    if "sha" in m.groupdict() and m["sha"] and not sha.startswith(m["sha"]):
        raise RecipeError(f"{name}: the checkpoint of fold {k} is now {sha[:8]}; embed ft:{m['run']}/fold{k}")
    cfg = conf["config"]
    base = get_recipe(cfg["model"])
    kw = dict(base.model_kwargs, **(conf.get("overrides") or {}))
    fields_ = {f.name: getattr(base, f.name) for f in fields(Recipe)}
    canonical = finetuned_set_name(conf["run_key"], k, sha)
    fields_.update(name=canonical, family="finetune", kwargs=tuple(sorted(kw.items())),
                   note=f"{cfg['method']} fine-tune of {base.name}, fold {k} (run {conf['run_key'][:8]})")
    # the fold's own evaluation transform and precision (runs stored before these fields read as the recipe's)
    norm = "half" if cfg["norm"] == "paper" else cfg["norm"]
    mean, std = NORM_STATS.get(norm, (base.mean, base.std))
    fields_.update(mean=mean, std=std, resize=cfg.get("eval_resize") or base.resize,
                   interpolation=cfg.get("eval_interpolation") or base.interpolation)
    if cfg.get("eval_precision", "auto") != "auto":
        fields_.update(precision=cfg["eval_precision"])
    recipe = FinetunedRecipe(**fields_, base=base.name, method=cfg["method"], finetune_fold=k,
                             run_key=conf["run_key"],
                             lora=(cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"], tuple(cfg["lora_targets"])),
                             checkpoint_sha256=sha, checkpoint=str(rd / f"fold{k}" / MODEL_FILE))
    try:
        known = get_recipe(canonical)
    except RecipeError:
        return register(recipe)
    return known if known == recipe else recipe



def is_finetuned_name(name: str) -> bool:
    """``ft:<run>/fold<k>`` or a canonical ``ft-<run8>-fold<k>.<sha8>``."""
    return bool(_ALIAS.match(name) or FINETUNED_SET.match(name))


def resolve_finetuned(name: str, store_root: Path | None = None) -> Recipe | None:
    """The embedder registry's resolver for fine-tuned fold checkpoints (None for other names)."""
    return finetuned_recipe(store_root, name) if is_finetuned_name(name) else None
