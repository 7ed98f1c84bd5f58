"""The recipe registry: one frozen ``Recipe`` per embedder, one module per model family (every module
in this package is imported and registers its recipes; the tests parametrize over them).

A recipe holds exactly what changes a vector (architecture and kwargs, weight source, input
geometry, normalisation, precision, outputs) and nothing that does not (batch size, device,
workers: those are arguments of ``embedder.embed``). Names follow timm's ``arch.tag`` scheme with
the tag naming the weight source: ``virchow2.hf`` (hub weights), ``virchow2.random`` (same
architecture, seeded random weights). Torch-free: listing recipes never imports torch.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from mitoprobe.store.errors import RecipeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHT_SOURCES = ("hf", "random", "none", "local")
PLACEMENTS = ("upsample", "native")
PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Recipe:
    """One embedder. Every field except ``note`` enters the recipe id.

    Geometry: ``placement="upsample"`` resizes the 128 px patch to ``resize`` px (``interpolation``)
    then centre-crops ``input_size`` (the paper's way); ``"native"`` keeps the pixel scale and
    centre-places the patch on an ``input_size`` canvas (reflect padding; centre crop if smaller).
    ``precision`` is the autocast dtype on GPU (CPU runs fp32; the run's device and dtype are
    recorded in the set's provenance). ``outputs`` are the stored vector columns with their
    dimensions; ``paper_outputs`` those the paper concatenates for its probes.

    ``weights="local"`` recipes (recipe files, ``embedder.recipe_file``) load ``weights_file`` and
    are identified by ``weights_sha256``: the file's location (and ``source``, the recipe file a
    recipe came from) is machine-specific, so it never enters the id; its content does. Fields
    added after the first release (``OPTIONAL_IDENTITY``) enter the id only when they differ from
    their defaults, so adding one never changes an existing recipe's id.
    """

    name: str
    family: str
    arch: str  # timm architecture name, or "handcrafted"
    kwargs: tuple[tuple[str, Any], ...] = ()  # timm create_model kwargs (layer classes by name)
    weights: str = "random"  # "hf" | "random" | "none"
    hub_id: str | None = None
    revision: str | None = None  # hub revision; None = the default branch (unpinned)
    seed: int = 0  # random-weight initialisation seed
    input_size: int = 224
    resize: int = 224
    interpolation: str = "bicubic"
    placement: str = "upsample"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "bf16"
    outputs: tuple[tuple[str, int], ...] = (("cls", 0), ("mean", 0))
    paper_outputs: tuple[str, ...] = ("cls",)
    schema_version: int = 1
    note: str = field(default="", compare=False)
    weights_sha256: str = ""  # weights="local": the sha256 of weights_file (what identifies them)
    weights_file: str = field(default="", compare=False)  # weights="local": where they are (not identity)
    source: str = field(default="", compare=False)  # the recipe file this recipe came from (not identity)

    def __post_init__(self) -> None:
        if "." not in self.name and self.weights != "none":
            raise ValueError(f"recipe name {self.name!r} must be arch.tag (e.g. virchow2.hf)")
        if self.weights not in WEIGHT_SOURCES:
            raise ValueError(f"{self.name}: weights must be one of {WEIGHT_SOURCES}")
        if self.weights == "hf" and not self.hub_id:
            raise ValueError(f"{self.name}: hub weights need hub_id")
        if self.weights == "local" and not (len(self.weights_sha256) == 64 and self.weights_file):
            raise ValueError(f"{self.name}: local weights need weights_file and its 64-hex weights_sha256")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"{self.name}: placement must be one of {PLACEMENTS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"{self.name}: precision must be one of {PRECISIONS}")
        if not self.outputs or any(d <= 0 for _, d in self.outputs):
            raise ValueError(f"{self.name}: every output needs a positive dimension")
        if not set(self.paper_outputs) <= set(self.output_dims):
            raise ValueError(f"{self.name}: paper_outputs must be among outputs")

    @property
    def output_dims(self) -> dict[str, int]:
        return dict(self.outputs)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return dict(self.kwargs)

    @property
    def is_vit(self) -> bool:
        return set(self.output_dims) == {"cls", "mean"}

    def identity(self) -> dict:
        """The fields that change a vector: everything but ``NOT_IDENTITY``; the ``OPTIONAL_IDENTITY``
        fields only where they differ from their defaults (so existing ids stay what they were)."""
        d = asdict(self)
        for name in NOT_IDENTITY:
            d.pop(name, None)
        for name in OPTIONAL_IDENTITY:
            if name in d and d[name] == _DEFAULTS[name]:
                d.pop(name)
        return d


NOT_IDENTITY = ("note", "weights_file", "source")  # words and machine-specific paths
OPTIONAL_IDENTITY = ("weights_sha256",)  # fields added later: in the id only when set
_DEFAULTS = {f.name: f.default for f in fields(Recipe)}


_REGISTRY: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    """Add a recipe; a duplicate name raises (names are cache keys)."""
    if recipe.name in _REGISTRY:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """A registered recipe by name (built-in or registered earlier in this process)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RecipeError(f"unknown embedder {name!r}; `mitoprobe embed --list` shows the recipes "
                          f"({', '.join(sorted(_REGISTRY))})") from None


# -- resolvers: names that higher layers turn into recipes ------------------------------------------
# A resolver maps a name this registry does not hold (e.g. ``ft:<run>/fold<k>``, a fine-tuned fold
# checkpoint inside a store) to a Recipe, or returns None for names it does not own. Higher layers
# register theirs (``finetune`` does on import); the ``mitoprobe.recipe_resolvers`` entry point makes
# them discoverable in a fresh process that never imported that layer. The registry never imports them.
Resolver = Callable[[str, Path | None], Recipe | None]
RESOLVER_ENTRY_POINT = "mitoprobe.recipe_resolvers"
_RESOLVERS: dict[str, Resolver] = {}
_entry_points_loaded = False


def register_resolver(key: str, resolver: Resolver) -> Resolver:
    """Add (or replace, under the same ``key``) a resolver for names outside the registry."""
    _RESOLVERS[key] = resolver
    return resolver


def _load_entry_point_resolvers() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=RESOLVER_ENTRY_POINT):
        if ep.name not in _RESOLVERS:
            register_resolver(ep.name, ep.load())


def resolve_recipe(name: str, store_root: Path | None = None) -> Recipe:
    """The recipe called ``name``: a registered one, else the first registered resolver's answer.

    ``store_root`` lets store-bound resolvers (fine-tuned checkpoints) look inside that store.
    Raises RecipeError naming what to do when nothing resolves the name (never a fallback)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    _load_entry_point_resolvers()
    for resolver in _RESOLVERS.values():
        recipe = resolver(name, store_root)
        if recipe is not None:
            return recipe
    raise RecipeError(f"unknown embedder {name!r}: neither a recipe (`mitoprobe embed --list`) nor a name any "
                      f"resolver knows ({', '.join(sorted(_RESOLVERS)) or 'none registered'}); fine-tuned folds "
                      "are named ft:<run>/fold<k> (`mitoprobe finetune --list`)")


def list_recipes(family: str | None = None) -> list[Recipe]:
    return [r for r in _REGISTRY.values() if family is None or r.family == family]


def vit_pair(name_stem: str, family: str, hub_id: str, dim: int, **fields: Any) -> tuple[Recipe, Recipe]:
    """The ``.hf`` recipe and its ``.random`` twin (same architecture, seeded random weights)."""
    outputs = (("cls", dim), ("mean", dim))
    hf = Recipe(name=f"{name_stem}.hf", family=family, weights="hf", hub_id=hub_id, outputs=outputs, **fields)
    rnd = Recipe(name=f"{name_stem}.random", family=family, weights="random", outputs=outputs,
                 **{k: v for k, v in fields.items() if k != "note"},
                 note=f"random-weight control with the {name_stem}.hf architecture")
    return register(hf), register(rnd)


def random_twin(stem: str) -> Recipe:
    """``<stem>.random``: the registered random-weight twin of ``<stem>.hf``, or (for the hub-only end-to-end
    baselines, Swin-B and ViT-L) one registered now in this process with the same architecture. A dry run of
    anything the paper trains (``paper plan --random``, ``benchmarks.gpu_check``) then needs no weights."""
    name = f"{stem}.random"
    if name in _REGISTRY:
        return _REGISTRY[name]
    base = get_recipe(f"{stem}.hf")
    return register(replace(base, name=name, weights="random", hub_id=None, revision=None,
                            note=f"random-weight control with the {base.name} architecture"))


def _register_families() -> tuple[str, ...]:
    """Import every family module in this package (each registers its recipes on import), in name
    order: adding a model family is adding one module here, nothing else. Returns the built-in names."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return tuple(_REGISTRY)


BUILTIN: tuple[str, ...] = _register_families()


def builtin_recipes() -> list[Recipe]:
    """The recipes the family modules define (not those registered later at run time, e.g. by tests)."""
    return [_REGISTRY[n] for n in BUILTIN]


__all__ = ["BUILTIN", "IMAGENET_MEAN", "IMAGENET_STD", "Recipe", "builtin_recipes", "get_recipe", "list_recipes", "random_twin",
           "register", "register_resolver", "resolve_recipe"]
