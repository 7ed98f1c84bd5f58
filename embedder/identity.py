"""Recipe ids: a stable hash of the recipe, the library versions and the weights' identity.

Torch-free on purpose: the classifiers call ``recipe_id_of`` to refuse stale vectors. Library
versions come from package metadata, never from importing the libraries.

The weights' identity is their content, never their location: a local file by its sha256 (a recipe
file's ``weights_sha256``; a ``--weights`` override also by its file name, as before), hub weights
by the commit the hub served (``embedder.hub``), random weights by their seed.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache
from pathlib import Path

from mitoprobe.store.errors import WeightsError
from mitoprobe.store.hashing import config_hash, file_sha256

from .hub import hub_commit
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in this process (weights are GBs)."""
    p = Path(path)
    st = p.stat()
    return _file_identity(str(p.resolve()), st.st_size, st.st_mtime_ns)


def weights_identity(recipe: Recipe, weights: str | Path | None = None, *, hub_revision: str | None = None,
                     store_root: str | Path | None = None) -> dict:
    """Where the weights come from, precisely enough that different weights give different ids.

    Hub weights: ``hub_revision`` is the commit the hub served (the job passes it); without it the
    commit is looked up without network (``embedder.hub.hub_commit``: a pinned commit, the local
    cache's ref, else the newest stored set in ``store_root``). When nothing knows it the revision
    reads ``unresolved:<ref>``: no stored set can carry that id, so a reader asking for it gets "no
    embeddings stored", never vectors from an unknown commit."""
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise WeightsError(f"weights file {p} not found")
        st = p.stat()
        return {"source": "local", "file": p.name, "sha256": _file_identity(str(p.resolve()), st.st_size,
                                                                           st.st_mtime_ns)}
    if recipe.weights == "local":
        return {"source": "local", "sha256": recipe.weights_sha256}
    if recipe.weights == "hf":
        commit = hub_revision or hub_commit(recipe, store_root)
        return {"source": "hf", "hub_id": recipe.hub_id,
                "revision": commit or f"unresolved:{recipe.revision or 'main'}"}
    if recipe.weights == "random":
        return {"source": "random", "seed": recipe.seed}
    return {"source": "none"}


def identity_of(recipe: Recipe, weights: str | Path | None = None, *, hub_revision: str | None = None,
                store_root: str | Path | None = None) -> dict:
    """What the recipe id hashes (and the set's ``recipe.json`` records)."""
    return {"recipe": recipe.identity(),
            "weights": weights_identity(recipe, weights, hub_revision=hub_revision, store_root=store_root),
            "package_versions": package_versions(recipe), "embedder_version": EMBEDDER_VERSION}


def recipe_id_of(name: str | Recipe, weights: str | Path | None = None, store_root: Path | None = None, *,
                 hub_revision: str | None = None) -> str:
    """The current recipe id of embedder ``name`` (pass ``weights`` when a local file was used).

    Names outside the registry go through the registered resolvers (``store_root``: the store whose
    fine-tuned runs and recipe files they may name); an unresolvable name raises RecipeError. Hub
    recipes: ``hub_revision`` is the served commit, else it is looked up (see ``weights_identity``)."""
    recipe = name if isinstance(name, Recipe) else resolve_recipe(name, store_root)
    return config_hash(identity_of(recipe, weights, hub_revision=hub_revision, store_root=store_root))


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the recipe fields alone (no weights identity, no library versions): what the golden
    file ``tests/golden/recipe_hashes.json`` pins, so an accidental recipe change shows in review."""
    return config_hash(recipe.identity())
