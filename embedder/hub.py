"""Which commit of a Hugging Face hub repo a hub recipe's vectors come from.

A hub repo's ``main`` moves: re-uploaded weights under the same name would silently change every
vector a recipe makes. So the commit the hub actually served enters the recipe id (and the set's
``recipe.json``): a recipe may pin ``revision`` itself; where it does not (the built-in ``.hf``
recipes), the job asks the hub (or, offline, the local cache) which commit ``main`` is and loads
exactly that commit. A later process finds the same commit without downloading anything:

1. a pinned 40-hex ``revision`` is the commit;
2. else the local huggingface_hub cache's ref (``models--org--name/refs/<revision or main>``),
   which every download of that revision updates;
3. else (the store was copied to a machine without that cache) the commit recorded by the newest
   stored set of the same recipe in the store, logged.

Torch-free and huggingface_hub-free on import (the classifiers compute recipe ids with it); the
cache folder is found the way huggingface_hub finds it, from the environment at call time.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mitoprobe.store.errors import DamagedStoreError
from mitoprobe.store.features import FeatureStore

from .recipes import Recipe

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_commit(revision: str | None) -> bool:
    """A full git commit hash (what a ref can never be moved away from)."""
    return bool(revision and _COMMIT.match(revision))


def hub_cache_dir() -> Path:
    """``$HF_HUB_CACHE``, else ``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (huggingface_hub's order)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expanduser(os.path.expandvars(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expanduser(os.path.expandvars(home))) / "hub"


def repo_cache_dir(hub_id: str) -> Path:
    """The cache folder of model repo ``org/name``: ``models--org--name``."""
    return hub_cache_dir() / ("models--" + hub_id.replace("/", "--"))


def cached_commit(hub_id: str, revision: str | None = None) -> str | None:
    """The commit the local cache's ref ``revision`` (default ``main``) points at; None if absent."""
    if is_commit(revision):
        return revision
    ref = repo_cache_dir(hub_id) / "refs" / (revision or "main")
    try:
        text = ref.read_text().strip()
    except OSError:
        return None
    return text if is_commit(text) else None


def stored_commit(store_root: str | Path | None, recipe: Recipe) -> str | None:
    """The hub commit recorded by the newest stored set of ``recipe`` (same name and hub repo) in the
    store at ``store_root``; None when there is none (or no store). Unreadable sets are skipped:
    ``mitoprobe store check`` reports them, and an id lookup is not the place to fail on them."""
    if store_root is None:
        return None
    fs = FeatureStore(Path(store_root))
    try:
        sets = fs.sets()
    except DamagedStoreError:
        return None
    best: tuple[float, str] | None = None
    for s in sets:
        w = s.provenance.get("weights") or {}
        if s.name != recipe.name or w.get("source") != "hf" or w.get("hub_id") != recipe.hub_id:
            continue
        if not is_commit(w.get("revision")):
            continue
        created = float(s.provenance.get("created", 0) or 0)
        if best is None or created > best[0]:
            best = (created, w["revision"])
    return None if best is None else best[1]


def hub_commit(recipe: Recipe, store_root: str | Path | None = None) -> str | None:
    """The commit a hub recipe's vectors come from, without network (see the module docstring);
    None when neither the recipe, the local cache nor the store knows it."""
    if is_commit(recipe.revision):
        return recipe.revision
    commit = cached_commit(recipe.hub_id, recipe.revision)
    if commit is not None:
        return commit
    commit = stored_commit(store_root, recipe)
    if commit is not None:
        log.info("%s: hf-hub:%s@%s is not in the local Hugging Face cache (%s); using commit %s, recorded by "
                 "the newest stored set of this recipe in %s", recipe.name, recipe.hub_id, recipe.revision or "main",
                 hub_cache_dir(), commit, store_root)
    return commit


def served_commit(hub_id: str, revision: str | None, token: str | None) -> str:
    """Ask the hub (or, offline, the local cache) which commit ``revision`` is now, the way every
    download does: fetch the repo's ``config.json`` (tiny; it updates the cache's ref) and read the
    commit off its snapshot folder, ``.../snapshots/<commit>/config.json``. Raises what
    huggingface_hub raises (the caller turns it into a WeightsError)."""
    from huggingface_hub import hf_hub_download

    path = Path(hf_hub_download(hub_id, "config.json", revision=revision, token=token or None))
    commit = path.parent.name
    if not is_commit(commit):  # a snapshot layout this code does not know: ask the ref instead
        commit = cached_commit(hub_id, revision) or ""
    if not is_commit(commit):
        raise RuntimeError(f"could not tell which commit of {hub_id} was served (snapshot path {path})")
    return commit
