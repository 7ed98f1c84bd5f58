"""``build(recipe) -> (model, transform)``: the only caller of ``timm.create_model`` and the only
place evaluation transforms are made. The embedding job, the Ray actors, the benchmark, the tests and
the fine-tuning job (``finetune``, which wraps ``preprocess`` in its training augmentation) all go
through here.

Weights, in order: a local file (``weights=PATH``: safetensors; ``.pt/.pth/.bin`` via
``torch.load(weights_only=True)``; arbitrary pickles only with ``trust_pickle=True``), else the
recipe's hub weights (timm ``hf-hub:`` id, token read from ``$HF_TOKEN`` or ``hf_token_env``, never
written anywhere), else seeded random weights (``.random`` recipes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from store.errors import RecipeError, WeightsError

from .handcrafted import handcrafted_features
from .recipes import Recipe, resolve_recipe
from .transforms import Preprocess

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class HandcraftedTransform:
    """Picklable worker-side transform for the handcrafted embedder: pixels -> feature vector."""

    def __call__(self, rgb):
        return handcrafted_features(rgb)


def _layer(name: str):
    import torch
    from timm import layers

    if hasattr(torch.nn, name):
        return getattr(torch.nn, name)
    if hasattr(layers, name):
        return getattr(layers, name)
    raise RecipeError(f"unknown layer {name!r} in recipe kwargs")


def create_kwargs(recipe: Recipe, overrides: dict | None = None) -> dict[str, Any]:
    """Recipe kwargs with layer names resolved to classes (``overrides``: tests' tiny configs)."""
    kw = dict(recipe.model_kwargs, **(overrides or {}))
    for key in ("mlp_layer", "act_layer", "norm_layer"):
        if isinstance(kw.get(key), str):
            kw[key] = _layer(kw[key])
    return kw


@contextmanager
def _hf_token(env_name: str):
    """Expose the token from ``env_name`` as ``HF_TOKEN`` for this process only."""
    old = os.environ.get("HF_TOKEN")
    token = os.environ.get(env_name)
    if token and env_name != "HF_TOKEN":
        os.environ["HF_TOKEN"] = token
    try:
        yield token or old
    finally:
        if env_name != "HF_TOKEN":
            if old is None:
                os.environ.pop("HF_TOKEN", None)
            else:
                os.environ["HF_TOKEN"] = old


def _unavailable(recipe: Recipe, why: str, env_name: str) -> WeightsError:
    return WeightsError(
        f"weights for {recipe.name} (hf-hub:{recipe.hub_id}) are unavailable: {why}. Two ways out: "
        f"accept the model's terms on huggingface.co and set ${env_name} to a read token, or pass "
        f"--weights PATH to a local copy of the weights (.safetensors; .pt/.bin are loaded with "
        f"weights_only=True). Offline, `mitoprobe embed --list` shows embedders that need no download.")


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict:
    """A state dict from a local file; refuses arbitrary pickles unless ``trust_pickle``."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} not found")
    if p.suffix in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        sd = load_file(str(p), device="cpu")
    elif p.suffix in PICKLE_SUFFIXES:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=not trust_pickle)
        except Exception as exc:  # UnpicklingError and friends: the file holds more than tensors
            if trust_pickle:
                raise WeightsError(f"{p}: cannot load ({exc})") from exc
            raise WeightsError(f"{p}: refusing to unpickle arbitrary objects (torch.load weights_only=True "
                             f"failed: {type(exc).__name__}). Convert it to .safetensors, or pass "
                             "--trust-pickle if you trust whoever made this file.") from exc
    else:
        raise WeightsError(f"{p}: unknown weights format {p.suffix!r}; use .safetensors (or .pt/.bin state dicts)")
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{p}: expected a state dict, found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _create(recipe: Recipe, weights, trust_pickle: bool, hf_token_env: str, overrides: dict | None):
    import timm
    import torch

    kw = create_kwargs(recipe, overrides)
    if weights is not None:
        model = timm.create_model(recipe.arch, pretrained=False, **kw)
        sd = load_state_dict(weights, trust_pickle)
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise WeightsError(f"{weights}: does not fit {recipe.name} ({recipe.arch}): "
                             f"{str(exc).splitlines()[1].strip() if chr(10) in str(exc) else exc}") from exc
        missing = [k for k in missing if not k.startswith("head.")]
        if missing or unexpected:
            raise WeightsError(f"{weights}: does not fit {recipe.name} ({recipe.arch}): "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        return model
    if recipe.weights == "hf":
        rev = f"@{recipe.revision}" if recipe.revision else ""
        with _hf_token(hf_token_env) as token:
            try:
                return timm.create_model(f"hf-hub:{recipe.hub_id}{rev}", pretrained=True, **kw)
            except Exception as exc:  # gated/no token/offline/not found: all end the same way for the user
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                if not token:
                    reason = f"no ${hf_token_env} set ({reason})"
                raise _unavailable(recipe, reason, hf_token_env) from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return timm.create_model(recipe.arch, pretrained=False, **kw)


class FeatureModel:
    """Wraps a timm backbone; ``__call__(x) -> {output: (B, d)}`` per the recipe.

    ViTs: ``cls`` = the final-norm CLS token; ``mean`` = mean of the patch tokens, skipping every
    prefix token (CLS and registers) via ``backbone.num_prefix_tokens``. CNNs: ``vector`` = the
    backbone's global pool. ``backbone`` is the plain timm module (for fine-tuning).
    """

    def __init__(self, recipe: Recipe, backbone):
        self.recipe = recipe
        self.backbone = backbone.eval()
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 0))

    def to(self, *args, **kwargs) -> "FeatureModel":
        self.backbone = self.backbone.to(*args, **kwargs)
        return self

    @property
    def output_dims(self) -> dict[str, int]:
        d = int(self.backbone.num_features)
        return {k: d for k in self.recipe.output_dims}

    def __call__(self, x) -> dict:
        if self.recipe.is_vit:
            tokens = self.backbone.forward_features(x)
            return {"cls": tokens[:, 0], "mean": tokens[:, self.num_prefix_tokens:].mean(dim=1)}
        return {"vector": self.backbone(x)}


def build(recipe: Recipe | str, weights: str | Path | None = None, *, trust_pickle: bool = False,
          hf_token_env: str = "HF_TOKEN", overrides: dict | None = None):
    """(model, transform) for a recipe.

    ``model(x)`` maps a (B, 3, S, S) float batch to ``{output: (B, d)}``; ``transform`` maps one
    (H, W, 3) uint8 RGB patch to the model's (3, S, S) float32 input. For ``handcrafted`` the
    transform already yields the (57,) feature vector and ``model`` is None.
    ``overrides`` replaces create_model kwargs (tests build tiny stand-ins of the real architectures).
    """
    recipe = resolve_recipe(recipe) if isinstance(recipe, str) else recipe
    if recipe.arch == "handcrafted":
        return None, HandcraftedTransform()
    backbone = _create(recipe, weights, trust_pickle, hf_token_env, overrides)
    adapt = getattr(recipe, "adapt_backbone", None)
    if adapt is not None:  # resolved recipes (e.g. finetune's fold checkpoints) put their weights on the base
        backbone = adapt(backbone)
    return FeatureModel(recipe, backbone), Preprocess.from_recipe(recipe)


def preprocess(recipe: Recipe | str, mean=None, std=None) -> Preprocess:
    """The recipe's input transform; fine-tuning may swap the normalisation (the paper's 0.5/0.5)."""
    recipe = resolve_recipe(recipe) if isinstance(recipe, str) else recipe
    p = Preprocess.from_recipe(recipe)
    return replace(p, mean=tuple(mean or p.mean), std=tuple(std or p.std))


def count_params(recipe: Recipe | str, overrides: dict | None = None) -> int:
    """Parameter count of the recipe's architecture, built on the meta device (no memory, no weights)."""
    import timm
    import torch

    recipe = resolve_recipe(recipe) if isinstance(recipe, str) else recipe
    if recipe.arch == "handcrafted":
        return 0
    with torch.device("meta"):
        model = timm.create_model(recipe.arch, pretrained=False, **create_kwargs(recipe, overrides))
    return sum(p.numel() for p in model.parameters())
