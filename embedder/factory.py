"""``build(recipe) -> (model, transform)``: the only caller of ``timm.create_model`` and the only
place evaluation transforms are made. The embedding job, the Ray actors, the benchmark, the tests and
the fine-tuning job (``finetune``, which wraps ``preprocess`` in its training augmentation) all go
through here.

Weights, in order: a local file (``weights=PATH``: safetensors; ``.pt/.pth/.bin`` via
``torch.load(weights_only=True)``; arbitrary pickles only with ``trust_pickle=True``), else the
recipe's own local file (``weights="local"`` recipe files: the same loaders, after checking the
file's sha256 against the recipe), else the recipe's hub weights (timm ``hf-hub:`` id at the
recipe's revision or the commit the job resolved, token read from ``$HF_TOKEN`` or
``hf_token_env``, never written anywhere), else seeded random weights (``.random`` recipes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitoprobe.store.errors import RecipeError, WeightsError

from .handcrafted import feature_transform
from .hub import served_commit
from .identity import file_digest
from .recipes import Recipe, resolve_recipe
from .transforms import Preprocess

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_HEAD_PREFIXES = ("head.",)  # classifier heads a local file may lack (the embedder never uses them)


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


def check_weights_option(recipe: Recipe, weights: str | Path | None) -> None:
    """RecipeError when a weights file is passed to a recipe that has no weights (``handcrafted``):
    it would be ignored, yet change the recipe id and so build a second, identical set."""
    if weights is not None and recipe.weights == "none":
        raise RecipeError(f"{recipe.name} has no network weights, so --weights {weights} would be ignored; "
                          "drop --weights (or pick a recipe with a network: `mitoprobe embed --list`)")


def verify_sha256(recipe: Recipe) -> Path:
    """The recipe's local weights file, after checking its sha256 against the recipe (WeightsError
    naming both digests otherwise): the id promises those exact bytes."""
    p = Path(recipe.weights_file)
    if not p.is_file():
        raise WeightsError(f"{recipe.name}: weights file {p} not found{_from(recipe)}; put it back, or point "
                           "`weights` in the recipe file at it and run `mitoprobe embed --recipe FILE` again")
    actual = file_digest(p)
    if actual != recipe.weights_sha256:
        raise WeightsError(f"{recipe.name}: {p} has sha256 {actual}, but the recipe pins {recipe.weights_sha256}"
                           f"{_from(recipe)}: the file is not the one the recipe names. If it is the file you "
                           f'mean, set sha256 = "{actual}" in the recipe file')
    return p


def _from(recipe: Recipe) -> str:
    return f" (recipe {recipe.source})" if recipe.source else ""


def _weights_path(recipe: Recipe, weights):
    """The local file to load: an explicit ``weights`` override, else a local recipe's own (checked)."""
    if weights is not None:
        return weights
    if recipe.weights == "local":
        return verify_sha256(recipe)
    return None


def hub_revision(recipe: Recipe, hf_token_env: str = "HF_TOKEN") -> str:
    """The commit the hub serves for a hub recipe's revision now (or, offline, the cache's), as a
    WeightsError saying how to get access when it cannot be reached (``embedder.hub.served_commit``)."""
    with _hf_token(hf_token_env) as token:
        try:
            return served_commit(recipe.hub_id, recipe.revision, token)
        except Exception as exc:  # gated / no token / offline / not found: one message for the user
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if not token:
                reason = f"no ${hf_token_env} set ({reason})"
            raise _unavailable(recipe, reason, hf_token_env) from exc


def _not_readable(p: Path, kind: str, exc: Exception, hint: str = "") -> WeightsError:
    why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return WeightsError(f"{p}: not a readable {kind} file ({type(exc).__name__}: {why}); it is truncated, "
                        f"damaged or in another format: download or copy it again, or pass the right file "
                        f"(.safetensors; .pt/.bin state dicts){hint}")


def _torch_load(p: Path, trust_pickle: bool):
    import pickle

    import torch

    hint = "" if trust_pickle else "; a full pickle you trust loads with --trust-pickle"
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "Unsupported global" in str(exc):  # a real pickle holding more than tensors
            raise WeightsError(f"{p}: refusing to unpickle arbitrary objects (torch.load weights_only=True "
                               f"failed: {type(exc).__name__}). Convert it to .safetensors, or pass "
                               "--trust-pickle if you trust whoever made this file.") from exc
        raise _not_readable(p, "torch checkpoint", exc, hint) from exc
    except Exception as exc:  # truncated zip, not a pickle at all, ...: torch raises many types
        raise _not_readable(p, "torch checkpoint", exc, hint) from exc


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict:
    """A state dict from a local file; refuses arbitrary pickles unless ``trust_pickle``.
    Every way a file can be unreadable (truncated, not really safetensors, not a checkpoint) is a
    WeightsError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file {p} not found")
    if p.suffix in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except Exception as exc:  # SafetensorError (a bad header, a short file), OSError
            raise _not_readable(p, "safetensors", exc) from exc
    elif p.suffix in PICKLE_SUFFIXES:
        sd = _torch_load(p, trust_pickle)
    else:
        raise WeightsError(f"{p}: unknown weights format {p.suffix!r}; use .safetensors (or .pt/.bin state dicts)")
    return _unwrap(p, sd)


def _unwrap(p: Path, sd) -> dict:
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{p}: expected a state dict, found {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _weight_shapes(path: str | Path, trust_pickle: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a weights file; a .safetensors file is read from its header only."""
    p = Path(path)
    if p.suffix in SAFE_SUFFIXES and p.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:
            raise _not_readable(p, "safetensors", exc) from exc
        return {k.removeprefix("module."): v for k, v in shapes.items()}
    return {k: tuple(getattr(v, "shape", ())) for k, v in load_state_dict(p, trust_pickle).items()}


def _misfit(recipe: Recipe, weights, expected: dict[str, tuple], got: dict[str, tuple]) -> WeightsError | None:
    wrong = [f"{k} {got[k]} != {expected[k]}" for k in got if k in expected and tuple(got[k]) != tuple(expected[k])]
    missing = [k for k in expected if k not in got and not k.startswith(_HEAD_PREFIXES)]
    unexpected = [k for k in got if k not in expected]
    if not (wrong or missing or unexpected):
        return None
    return WeightsError(f"{weights}: does not fit {recipe.name} ({recipe.arch}): "
                        + "; ".join(x for x in (f"shapes {wrong[:3]}" if wrong else "",
                                                f"missing {missing[:5]}" if missing else "",
                                                f"unexpected {unexpected[:5]}" if unexpected else "") if x))


def check_weights(recipe: Recipe | str, weights: str | Path | None = None, *, trust_pickle: bool = False,
                  hf_token_env: str = "HF_TOKEN", overrides: dict | None = None) -> None:
    """Fail now, before a job writes anything, when ``build`` would fail on the weights: a local
    file is read (a .safetensors header only) and matched against the architecture built on the meta
    device (no memory); hub weights are reached (their config.json, from the cache when there).
    Random weights need nothing. For jobs that build the model elsewhere (Ray actors, fine-tuning)."""
    import timm
    import torch

    recipe = resolve_recipe(recipe) if isinstance(recipe, str) else recipe
    check_weights_option(recipe, weights)
    if recipe.arch == "handcrafted":
        return
    weights = _weights_path(recipe, weights)
    if weights is not None:
        got = _weight_shapes(weights, trust_pickle)
        with torch.device("meta"):
            model = timm.create_model(recipe.arch, pretrained=False, **create_kwargs(recipe, overrides))
        err = _misfit(recipe, weights, {k: tuple(v.shape) for k, v in model.state_dict().items()}, got)
        if err is not None:
            raise err
        return
    if recipe.weights == "hf":
        hub_revision(recipe, hf_token_env)


def _create(recipe: Recipe, weights, trust_pickle: bool, hf_token_env: str, overrides: dict | None):
    import timm
    import torch

    kw = create_kwargs(recipe, overrides)
    weights = _weights_path(recipe, weights)
    if weights is not None:
        model = timm.create_model(recipe.arch, pretrained=False, **kw)
        sd = load_state_dict(weights, trust_pickle)
        try:
            missing, unexpected = model.load_state_dict(sd, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise WeightsError(f"{weights}: does not fit {recipe.name} ({recipe.arch}): "
                             f"{str(exc).splitlines()[1].strip() if chr(10) in str(exc) else exc}") from exc
        missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
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


OUTPUT_KINDS = ("cls", "mean", "pooled", "vector")  # what FeatureModel computes (see its docstring)


class FeatureModel:
    """Wraps a timm backbone; ``__call__(x) -> {output: (B, d)}`` per the recipe's outputs.

    ``cls`` = the final-norm CLS token (``forward_features(x)[:, 0]``); ``mean`` = mean of the patch
    tokens, skipping every prefix token (CLS and registers) via ``backbone.num_prefix_tokens``;
    ``pooled`` = the model's own pooled features (``forward_head(..., pre_logits=True)``: timm's
    global pool and, where the model has one, its ``fc_norm``); ``vector`` = ``backbone(x)`` (the
    built-in CNN controls, ``num_classes=0``: the global pool). One ``forward_features`` serves all
    token outputs. ``backbone`` is the plain timm module (for fine-tuning).
    """

    def __init__(self, recipe: Recipe, backbone):
        self.recipe = recipe
        self.backbone = backbone.eval()
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 0))
        self.kinds = tuple(recipe.output_dims)

    def to(self, *args, **kwargs) -> "FeatureModel":
        self.backbone = self.backbone.to(*args, **kwargs)
        return self

    @property
    def output_dims(self) -> dict[str, int]:
        d = int(self.backbone.num_features)
        pooled = int(getattr(self.backbone, "head_hidden_size", d) or d)
        return {k: pooled if k == "pooled" else d for k in self.recipe.output_dims}

    def __call__(self, x) -> dict:
        if self.kinds == ("vector",):
            return {"vector": self.backbone(x)}
        out = {}
        feats = self.backbone.forward_features(x)
        for k in self.kinds:
            if k == "cls":
                out[k] = feats[:, 0]
            elif k == "mean":
                out[k] = feats[:, self.num_prefix_tokens:].mean(dim=1)
            elif k == "pooled":
                out[k] = self.backbone.forward_head(feats, pre_logits=True)
            elif k == "vector":
                out[k] = self.backbone.forward_head(feats)
            else:
                raise RecipeError(f"{self.recipe.name}: unknown output {k!r}; outputs are one of {OUTPUT_KINDS}")
        return out


def token_outputs_error(recipe: Recipe, backbone) -> str | None:
    """Why ``cls``/``mean`` cannot be read off this backbone (None when they can): they need a
    ViT-style model whose ``forward_features`` returns tokens, the CLS token first."""
    wants = [k for k in ("cls", "mean") if k in recipe.output_dims]
    if not wants:
        return None
    if not hasattr(backbone, "num_prefix_tokens"):
        return (f"{recipe.arch} is not a token (ViT-style) model, so it has no {' or '.join(wants)} output; "
                'use outputs = ["pooled"]')
    if "cls" in wants and getattr(backbone, "cls_token", None) is None:
        return f'{recipe.arch} (with these kwargs) has no CLS token; use outputs = ["mean"] or ["pooled"]'
    return None


def derive_output_dims(recipe: Recipe, overrides: dict | None = None) -> dict[str, int]:
    """The dimension of each of the recipe's outputs, from one forward pass of the architecture on
    the meta device (no memory, no weights): the dims the stored vectors will have. RecipeError when
    the architecture cannot give an output (e.g. ``cls`` of a CNN) or cannot be built."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            backbone = timm.create_model(recipe.arch, pretrained=False, **create_kwargs(recipe, overrides))
    except RecipeError as exc:  # a layer name create_kwargs does not know
        raise _keyed(exc, "kwargs") from None
    except Exception as exc:  # unknown kwarg, bad value: timm raises TypeError/ValueError/AssertionError/...
        raise _keyed(RecipeError(f"{recipe.name}: timm cannot build {recipe.arch} with kwargs {recipe.model_kwargs} "
                                 f"({_gist(exc)})"), "kwargs") from exc
    why = token_outputs_error(recipe, backbone)
    if why:
        raise _keyed(RecipeError(f"{recipe.name}: {why}"), "outputs")
    x = torch.empty(1, 3, recipe.input_size, recipe.input_size, device="meta")
    try:
        with torch.no_grad():
            out = FeatureModel(recipe, backbone)(x)
    except Exception as exc:
        raise _keyed(RecipeError(f"{recipe.name}: {recipe.arch} does not run on a {recipe.input_size} px input "
                                 f"({_gist(exc)}); check input_size against the architecture's img_size"),
                     "input_size") from exc
    return {k: int(v.shape[-1]) for k, v in out.items()}


def _gist(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _keyed(err: RecipeError, key: str) -> RecipeError:
    """Tag an error with the recipe key it is about (a recipe file's error names the key)."""
    err.key = key
    return err


def build(recipe: Recipe | str, weights: str | Path | None = None, *, trust_pickle: bool = False,
          hf_token_env: str = "HF_TOKEN", overrides: dict | None = None):
    """(model, transform) for a recipe.

    ``model(x)`` maps a (B, 3, S, S) float batch to ``{output: (B, d)}``; ``transform`` maps one
    (H, W, 3) uint8 RGB patch to the model's (3, S, S) float32 input. For ``handcrafted`` the
    transform already yields the (57,) feature vector and ``model`` is None.
    ``overrides`` replaces create_model kwargs (tests build tiny stand-ins of the real architectures).
    """
    recipe = resolve_recipe(recipe) if isinstance(recipe, str) else recipe
    check_weights_option(recipe, weights)
    if recipe.arch == "handcrafted":
        return None, feature_transform(recipe.model_kwargs)  # the recipe's features kwarg picks the set
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
