"""Recipe ids: a stable hash of the recipe, the library versions and the weights' identity.

Torch-free on purpose: the classifiers call ``recipe_id_of`` to refuse stale vectors. Library
versions come from package metadata, never from importing the libraries.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

from store.errors import WeightsError
from store.hashing import config_hash, file_sha256

from .recipes import Recipe, resolve_recipe

# Bump when embedding code changes vectors without any recipe field changing.
EMBEDDER_VERSION = 1

NEURAL_PACKAGES = ("torch", "timm", "pillow")
HANDCRAFTED_PACKAGES = ("scikit-image", "scipy", "numpy", "pillow")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def package_versions(recipe: Recipe) -> dict[str, str]:
    pkgs = HANDCRAFTED_PACKAGES if recipe.arch == "handcrafted" else NEURAL_PACKAGES
    return {p: _version(p) for p in pkgs}


@lru_cache(maxsize=32)
def _file_identity(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def weights_identity(recipe: Recipe, weights: str | Path | None = None) -> dict:
    """Where the weights come from, precisely enough that different weights give different ids."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise WeightsError(f"weights file {p} not found")
        st = p.stat()
        return {"source": "local", "file": p.name, "sha256": _file_identity(str(p.resolve()), st.st_size,
                                                                           st.st_mtime_ns)}
    if recipe.weights == "hf":
        return {"source": "hf", "hub_id": recipe.hub_id, "revision": recipe.revision or "main"}
    if recipe.weights == "random":
        return {"source": "random", "seed": recipe.seed}
    return {"source": "none"}


def identity_of(recipe: Recipe, weights: str | Path | None = None) -> dict:
    return {"recipe": recipe.identity(), "weights": weights_identity(recipe, weights),
            "package_versions": package_versions(recipe), "embedder_version": EMBEDDER_VERSION}


def recipe_id_of(name: str | Recipe, weights: str | Path | None = None, store_root: Path | None = None) -> str:
    """The current recipe id of embedder ``name`` (pass ``weights`` when a local file was used).

    Names outside the registry go through the registered resolvers (``store_root``: the store whose
    fine-tuned runs they may name); an unresolvable name raises RecipeError."""
    recipe = name if isinstance(name, Recipe) else resolve_recipe(name, store_root)
    return config_hash(identity_of(recipe, weights))


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the recipe fields alone (no weights identity, no library versions): what the golden
    file ``tests/golden/recipe_hashes.json`` pins, so an accidental recipe change shows in review."""
    return config_hash(recipe.identity())
