"""Recipes from TOML files: bring your own model (``mitoprobe embed --recipe my_model.toml``).

A recipe file declares what a built-in recipe does (timm architecture and kwargs, weights, input
geometry, normalisation, outputs, precision); ``docs/recipes.md`` is the reference. Every mistake
is a RecipeError naming the file, the key and the fix; unknown keys are refused (a typo must not
silently fall back to a default that changes every vector).

``add_recipe_file`` checks the file completely (the weights' sha256, the architecture built on the
meta device, the weights' tensor shapes) and then saves a normalised copy into the store,
``<store>/recipes/<name>.toml``: absolute weights path, pinned sha256, output dimensions. The
embedder's own resolver (registered below) turns the name back into the recipe from that copy, in
any later process and without torch, so ``mitoprobe probe --model <name>`` finds the recipe id the
way it finds a built-in one. Names are per store, and never shadow a built-in recipe.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from mitoprobe.store import Store, paths
from mitoprobe.store.atomic import atomic_write
from mitoprobe.store.errors import RecipeError, StoreError

from .factory import OUTPUT_KINDS, PICKLE_SUFFIXES, SAFE_SUFFIXES, check_weights, derive_output_dims
from .identity import file_digest, recipe_hash
from .recipes import BUILTIN, IMAGENET_MEAN, IMAGENET_STD, PLACEMENTS, PRECISIONS, Recipe, list_recipes, \
    register_resolver
from .transforms import INTERPOLATIONS

RECIPES_DIR = "recipes"  # <store>/recipes/<name>.toml: the store's normalised recipe files
FILE_OUTPUTS = tuple(k for k in OUTPUT_KINDS if k != "vector")  # what a recipe file may ask for
DEFAULT_FAMILY = "custom"
KEYS = {  # key -> what it holds (the unknown-key error lists these)
    "name": "arch.tag name, e.g. mymodel.v1",
    "arch": "timm architecture, e.g. vit_base_patch16_224",
    "kwargs": "table of timm.create_model keyword arguments",
    "weights": "local weights file, relative to the recipe file (.safetensors, .pt, .pth, .bin)",
    "sha256": "sha256 of the weights file",
    "hub": 'Hugging Face hub id, "hf-hub:org/name"',
    "revision": "hub commit or tag",
    "input_size": "model input in px (square)",
    "resize": "short side in px before the centre crop (upsample placement)",
    "interpolation": f"one of {', '.join(sorted(set(INTERPOLATIONS)))}",
    "placement": f"one of {', '.join(PLACEMENTS)}",
    "mean": "3 normalisation means",
    "std": "3 normalisation stds",
    "outputs": f"list of {', '.join(FILE_OUTPUTS)} (or a table name = dimension)",
    "paper_outputs": "outputs the probes concatenate (default: all)",
    "precision": f"one of {', '.join(PRECISIONS)}",
    "family": "a group name for listings",
    "note": "free text",
    "source": "the file a store copy was made from (informational)",
}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*\.[A-Za-z0-9_-]+$")
_HUB = re.compile(r"^hf-hub:([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RecipeFileResult:
    """What ``add_recipe_file`` did: the recipe, where its store copy is, and notes for the user."""

    recipe: Recipe
    path: Path
    notes: tuple[str, ...]


def _bad(where: Path, key: str, problem: str, fix: str) -> RecipeError:
    return RecipeError(f"{where}: key {key!r}: {problem}; {fix}")


def read_toml(path: Path) -> dict:
    """The file's TOML table (RecipeError naming the file and the line when it is not TOML)."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML ({exc}); fix it there (https://toml.io)") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe file ({exc.strerror or exc})") from None


def _str(d: dict, key: str, where: Path, default: str | None = None) -> str | None:
    v = d.get(key, default)
    if v is not None and (not isinstance(v, str) or not v.strip()):
        raise _bad(where, key, f"{v!r} is not a non-empty string", f'write it as {key} = "..."')
    return v


def _int(d: dict, key: str, where: Path, default: int, lo: int = 8, hi: int = 4096) -> int:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(where, key, f"{v!r} is not a whole number of pixels in [{lo}, {hi}]", f"e.g. {key} = 224")
    return v


def _choice(d: dict, key: str, where: Path, default: str, choices) -> str:
    v = d.get(key, default)
    if v not in choices:
        raise _bad(where, key, f"{v!r} is not allowed", f"use one of {', '.join(sorted(set(choices)))}")
    return v


def _triple(d: dict, key: str, where: Path, default: tuple, positive: bool = False) -> tuple[float, float, float]:
    v = d.get(key, list(default))
    ok = isinstance(v, list) and len(v) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    if not ok or (positive and any(x <= 0 for x in v)):
        what = "3 positive numbers" if positive else "3 numbers (one per RGB channel)"
        raise _bad(where, key, f"{v!r} is not {what}", f"e.g. {key} = {list(default)}")
    return tuple(float(x) for x in v)


def _kwarg_value(v: Any, where: Path, key: str):
    if isinstance(v, bool) or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _bad(where, f"kwargs.{key}", f"{v!r} is not finite", "give a finite number")
        return v
    if isinstance(v, list):
        return tuple(_kwarg_value(x, where, key) for x in v)
    raise _bad(where, f"kwargs.{key}", f"{type(v).__name__} values are not supported",
               "use numbers, strings, booleans or lists of them (layer classes by name, e.g. \"SiLU\")")


def _outputs(d: dict, where: Path) -> tuple[tuple[str, int], ...]:
    """``[names]`` (dimension 0 = derive it) or ``{name = dim}``; names from FILE_OUTPUTS, unique."""
    v = d.get("outputs", ["pooled"])
    fix = f'e.g. outputs = ["cls", "mean"]; each one of {", ".join(FILE_OUTPUTS)}'
    if isinstance(v, list):
        items = [(k, 0) for k in v]
    elif isinstance(v, dict):
        items = list(v.items())
    else:
        raise _bad(where, "outputs", f"{v!r} is neither a list of output names nor a table", fix)
    if not items:
        raise _bad(where, "outputs", "no outputs", fix)
    for k, dim in items:
        if k not in FILE_OUTPUTS:
            raise _bad(where, "outputs", f"unknown output {k!r}", fix)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise _bad(where, f"outputs.{k}", f"dimension {dim!r} is not a positive whole number",
                       "give the vector length, or list the names only to have it derived")
    if len({k for k, _ in items}) != len(items):
        raise _bad(where, "outputs", "an output is named twice", fix)
    return tuple(items)


def _weights(d: dict, where: Path, base: Path) -> dict:
    """The weight source's Recipe fields (sha256 may be empty: the caller pins it)."""
    local, hub = d.get("weights"), d.get("hub")
    if local is not None and hub is not None:
        raise _bad(where, "weights", "both weights and hub are set", "keep one weight source")
    if local is None and hub is None:
        raise _bad(where, "weights", "no weight source",
                   'set weights = "my_model.safetensors" (a local file, with sha256 = "...") or '
                   'hub = "hf-hub:org/name" (with revision = "<commit or tag>")')
    if local is not None:
        _str(d, "weights", where)
        if "revision" in d:
            raise _bad(where, "revision", "a revision pins hub weights, not a local file",
                       "drop revision (the file is pinned by sha256)")
        p = Path(local).expanduser()
        p = p if p.is_absolute() else base / p
        if p.suffix not in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            raise _bad(where, "weights", f"{local!r} has an unknown format {p.suffix!r}",
                       "use .safetensors (or a .pt/.pth/.bin state dict, loaded with weights_only=True)")
        sha = d.get("sha256", "")
        if not isinstance(sha, str) or (sha and not _SHA.match(sha.lower())):
            raise _bad(where, "sha256", f"{sha!r} is not a sha256 (64 hex digits)",
                       f"run `sha256sum {p.name}` and paste the digest, or drop the key to have it pinned")
        return dict(weights="local", weights_file=str(p.resolve()), weights_sha256=sha.lower())
    m = _HUB.match(hub) if isinstance(hub, str) else None
    if m is None:
        fix = 'write hub = "hf-hub:org/name" and pin the revision with revision = "..."' \
            if not (isinstance(hub, str) and "@" in hub) else 'put the revision in its own key: revision = "..."'
        raise _bad(where, "hub", f"{hub!r} is not a hub id", fix)
    if "sha256" in d:
        raise _bad(where, "sha256", "sha256 pins a local weights file, not a hub repo",
                   "drop sha256 and pin the hub repo with revision = \"<commit>\"")
    return dict(weights="hf", hub_id=m.group(1), revision=_str(d, "revision", where))


def parse_recipe(d: dict, where: Path, base: Path | None = None) -> tuple[Recipe, bool, bool]:
    """A Recipe from a recipe file's table, torch-free, with whether the file gave the weights'
    sha256 and every output's dimension. Missing ones hold placeholders (an all-zero digest,
    dimension 1) that ``complete_recipe`` replaces. ``base``: the folder relative weights paths
    start from (default: the file's)."""
    unknown = sorted(set(d) - set(KEYS))
    if unknown:
        near = {k: difflib.get_close_matches(k, KEYS, n=1) for k in unknown}
        hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
        raise RecipeError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}" + (f" ({hint})" if hint else "")
                          + f"; the keys are: {', '.join(KEYS)} (docs/recipes.md)")
    for key in ("name", "arch"):
        if key not in d:
            raise _bad(where, key, "missing", f'add {key} = "..." ({KEYS[key]})')
    name = _str(d, "name", where)
    if not _NAME.match(name) or name.startswith("ft-"):
        raise _bad(where, "name", f"{name!r} is not an arch.tag name",
                   "use letters, digits, _ or - with one dot, e.g. mymodel.v1 (the tag naming the weights)")
    if name in BUILTIN or name in {r.name for r in list_recipes()}:
        what = "a built-in recipe" if name in BUILTIN else "a recipe registered in this process"
        raise _bad(where, "name", f"{name!r} is {what}", f"pick another name, e.g. {name.split('.')[0]}.mylab")
    kw = d.get("kwargs", {})
    if not isinstance(kw, dict):
        raise _bad(where, "kwargs", "not a table", "write the arguments under a [kwargs] table")
    input_size = _int(d, "input_size", where, 224)
    resize = _int(d, "resize", where, input_size)
    placement = _choice(d, "placement", where, "upsample", PLACEMENTS)
    if placement == "upsample" and resize < input_size:
        raise _bad(where, "resize", f"{resize} is smaller than input_size {input_size}",
                   "resize the short side to at least input_size (the centre crop takes input_size from it)")
    outputs = _outputs(d, where)
    paper = d.get("paper_outputs", [k for k, _ in outputs])
    if not isinstance(paper, list) or not paper or not set(paper) <= {k for k, _ in outputs}:
        raise _bad(where, "paper_outputs", f"{paper!r} is not a list of the recipe's outputs",
                   f"choose from {[k for k, _ in outputs]}")
    for key in ("note", "source"):
        if not isinstance(d.get(key, ""), str):
            raise _bad(where, key, "not a string", f'write it as {key} = "..."')
    weights = _weights(d, where, base if base is not None else where.parent)
    sha_given = bool(weights.get("weights_sha256"))
    if weights["weights"] == "local" and not sha_given:
        weights["weights_sha256"] = "0" * 64  # placeholder: complete_recipe pins the real digest
    try:
        recipe = Recipe(
            name=name, family=_str(d, "family", where, DEFAULT_FAMILY), arch=_str(d, "arch", where),
            kwargs=tuple(sorted((k, _kwarg_value(v, where, k)) for k, v in kw.items())),
            input_size=input_size, resize=resize, placement=placement,
            interpolation=_choice(d, "interpolation", where, "bicubic", INTERPOLATIONS),
            mean=_triple(d, "mean", where, IMAGENET_MEAN), std=_triple(d, "std", where, IMAGENET_STD, positive=True),
            precision=_choice(d, "precision", where, "fp32", PRECISIONS),
            outputs=tuple((k, dim or 1) for k, dim in outputs), paper_outputs=tuple(paper),
            note=d.get("note", ""), source=d.get("source") or str(where.resolve()), **weights)
    except ValueError as exc:  # Recipe's own checks; every field was checked above, so a bug if reached
        raise RecipeError(f"{where}: {exc}") from None
    return recipe, sha_given, all(dim for _, dim in outputs)


def load_recipe_file(path: str | Path) -> tuple[Recipe, list[str]]:
    """A user's recipe file, checked completely and completed (the embed path; needs torch/timm).

    The weights' sha256 is checked (RecipeError giving the actual digest when it differs), or, when
    the file gives none, computed and pinned (a note says so). The architecture must be a timm one;
    every output's dimension is derived from it on the meta device and must match a given one.
    Returns the recipe and the notes for the user."""
    import timm

    where = Path(path)
    recipe, sha_given, dims_given = parse_recipe(read_toml(where), where)
    notes: list[str] = []
    if not timm.is_model(recipe.arch):
        near = difflib.get_close_matches(recipe.arch, timm.list_models(), n=3)
        raise _bad(where, "arch", f"{recipe.arch!r} is not a timm architecture",
                   f"did you mean {' or '.join(near)}?" if near else "see timm.list_models()")
    if recipe.weights == "local":
        wf = Path(recipe.weights_file)
        if not wf.is_file():
            raise _bad(where, "weights", f"{wf} not found", "the path is relative to the recipe file; fix it")
        actual = file_digest(wf)
        if sha_given and actual != recipe.weights_sha256:
            raise _bad(where, "sha256", f"{wf.name} has sha256 {actual}, not the pinned {recipe.weights_sha256}",
                       "the file is not the one the recipe names: use the right file, or, if this is the "
                       f'file you mean, set sha256 = "{actual}"')
        if not sha_given:
            notes.append(f"{where.name}: no sha256 given; pinned the sha256 of {wf.name}, {actual} (add "
                         f'sha256 = "{actual}" to {where.name} to pin it there too)')
        recipe = replace(recipe, weights_sha256=actual)
    try:
        dims = derive_output_dims(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{where}: key {getattr(exc, 'key', 'arch')!r}: {exc}") from None
    if dims_given and dims != recipe.output_dims:
        raise _bad(where, "outputs", f"dimensions {recipe.output_dims} differ from the architecture's {dims}",
                   "fix them, or list the output names only to have them derived")
    return replace(recipe, outputs=tuple(dims.items())), notes


# -- the store's copies --------------------------------------------------------------------------------

def recipes_dir(store_root: str | Path | None) -> Path:
    return paths.store_root(store_root) / RECIPES_DIR


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(recipe: Recipe) -> str:
    """The normalised recipe file of a complete recipe (every default spelt out, the weights path
    absolute, the sha256 and the output dimensions pinned). ``parse_recipe`` reads it back to the
    same recipe (checked by ``save_recipe``)."""
    top: dict[str, Any] = dict(name=recipe.name, family=recipe.family, arch=recipe.arch)
    if recipe.weights == "local":
        top.update(weights=recipe.weights_file, sha256=recipe.weights_sha256)
    else:
        top["hub"] = f"hf-hub:{recipe.hub_id}"
        if recipe.revision:
            top["revision"] = recipe.revision
    top.update(input_size=recipe.input_size, resize=recipe.resize, interpolation=recipe.interpolation,
               placement=recipe.placement, mean=recipe.mean, std=recipe.std, precision=recipe.precision,
               paper_outputs=recipe.paper_outputs, note=recipe.note, source=recipe.source)
    lines = [f"# mitoprobe recipe {recipe.name}: the store's normalised copy of {recipe.source or 'a recipe file'}.",
             "# `mitoprobe embed --recipe` writes it; edit the original file and run that again instead.", ""]
    lines += [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    lines += ["", "[outputs]"] + [f"{k} = {d}" for k, d in recipe.outputs]
    lines += ["", "[kwargs]"] + [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in recipe.kwargs]
    return "\n".join(lines) + "\n"


def save_recipe(store: Store | str | Path | None, recipe: Recipe) -> tuple[Path, list[str]]:
    """Write the recipe's normalised copy into the store (atomically); returns its path and notes.

    An identical copy is left alone. A copy of the same name but another recipe id is replaced,
    with a note: the sets embedded under the old id turn stale (refused by readers, never mixed)."""
    st = store if isinstance(store, Store) else Store(store)
    if not st.has_patches():
        raise StoreError(f"{st.root} is not a mitoprobe store with patches; import data first "
                         "(`mitoprobe data import`), or pass --store")
    path = st.root / RECIPES_DIR / f"{recipe.name}.toml"
    text = to_toml(recipe)
    back, _, _ = parse_recipe(tomllib.loads(text), path)
    if back != recipe or back.weights_file != recipe.weights_file:  # the writer's own check: a bug if it fails
        raise RuntimeError(f"normalised recipe {recipe.name} does not read back as written")
    notes: list[str] = []
    if path.is_file():
        if path.read_text() == text:
            return path, notes
        try:
            old, _, _ = parse_recipe(read_toml(path), path)
        except RecipeError:
            old = None
        if old is None or recipe_hash(old) != recipe_hash(recipe):
            notes.append(f"recipe {recipe.name} changed (replacing {path}): sets embedded with the earlier "
                         "version keep their own recipe id and are now stale")
    atomic_write(path, lambda tmp: tmp.write_text(text))
    _cached_store_recipe.cache_clear()
    return path, notes


def add_recipe_file(store: Store | str | Path | None, path: str | Path, *, trust_pickle: bool = False,
                    hf_token_env: str = "HF_TOKEN") -> RecipeFileResult:
    """Check a recipe file completely, then save its normalised copy into the store, so that its
    name resolves there (``embed --model NAME``, ``probe --model NAME``) in any later process.
    Nothing is written when any check fails: the file, the weights' sha256 and tensor shapes (a
    local file's are matched against the architecture on the meta device) or the hub's access."""
    recipe, notes = load_recipe_file(path)
    check_weights(recipe, trust_pickle=trust_pickle, hf_token_env=hf_token_env)
    copy, more = save_recipe(store, recipe)
    return RecipeFileResult(recipe, copy, tuple(notes + more))


@lru_cache(maxsize=64)
def _cached_store_recipe(path: str, mtime_ns: int, size: int) -> Recipe:
    p = Path(path)
    recipe, sha_given, dims_given = parse_recipe(read_toml(p), p)
    if not (dims_given and (sha_given or recipe.weights != "local")):
        raise RecipeError(f"{p}: not a normalised store copy (sha256 or output dimensions missing); "
                          "run `mitoprobe embed --recipe <your recipe file>` again to rewrite it")
    return recipe


def store_recipe(name: str, store_root: str | Path | None = None) -> Recipe | None:
    """The recipe ``name`` from the store's recipe files; None when the store has no such file.
    The embedder's resolver: torch-free, reads only the TOML (never the weights)."""
    if not _NAME.match(name):
        return None
    p = recipes_dir(store_root) / f"{name}.toml"
    try:
        st = p.stat()
    except OSError:
        return None
    return _cached_store_recipe(str(p), st.st_mtime_ns, st.st_size)


def store_recipes(store_root: str | Path | None = None) -> list[tuple[Path, Recipe | RecipeError]]:
    """Every recipe file in the store, parsed (or the error that file gives), in name order."""
    folder = recipes_dir(store_root)
    out: list[tuple[Path, Recipe | RecipeError]] = []
    for p in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            st = p.stat()
            out.append((p, _cached_store_recipe(str(p), st.st_mtime_ns, st.st_size)))
        except RecipeError as exc:
            out.append((p, exc))
    return out


register_resolver("recipe-file", store_recipe)
