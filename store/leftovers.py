"""Staging leftovers: the ``.tmp-`` files (and folders) of writes that never finished.

Every store writer stages under a ``.tmp-`` name (``atomic.TMP_PREFIX``: an import's staged patches part,
``atomic_write``'s temp siblings) and renames it into place; a process killed in between leaves the temp
behind, tens of MB for an import. Nothing refers to one. ``store check`` lists each with its age (a
warning); ``store repair --yes`` deletes those no running writer can still own (the one thing repair
deletes rather than quarantines: an unfinished write, as the writers' own sweep deletes them):

* older than ``atomic.STALE_TMP_SECONDS`` (an hour; writers rename their temps within seconds, and an
  import's staged part is held as below while it runs),
* not held by a live process (an import holds its staged parts until it commits: ``atomic.hold``), and
* in ``patches/``, only while no live process holds the patches lock (an import committing).

Any other is left alone, and repair says why. LanceDB's folders and the quarantine are not searched.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .atomic import STALE_TMP_SECONDS, TMP_PREFIX, in_use
from .findings import REPAIR, Problem
from .lock import describe, patches_lock

SKIPPED = ("quarantine",)  # top-level folders never searched (besides LanceDB tables, *.lance)


@dataclass(frozen=True)
class Leftover:
    path: Path
    age_s: float
    size: int
    live: str | None  # why a running writer may still own it (None: repair removes it)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _temps(root: Path) -> list[Path]:
    """Every ``.tmp-`` path under ``root`` (not inside another, nor in LanceDB tables or the quarantine)."""
    out = []
    for here, dirs, files in os.walk(root):
        top = Path(here) == root
        out += [Path(here, n) for n in [*dirs, *files] if n.startswith(TMP_PREFIX)]
        dirs[:] = [d for d in dirs if not d.startswith(TMP_PREFIX) and not d.endswith(".lance")
                   and not (top and d in SKIPPED)]
    return sorted(out)


def find(store) -> list[Leftover]:
    """The store's staging leftovers, each with why it may still be live."""
    root = Path(store.root)
    if not root.is_dir():
        return []
    holder = patches_lock(root).held_elsewhere()
    out = []
    for path in _temps(root):
        try:
            age, size = time.time() - path.stat().st_mtime, _size(path)
        except FileNotFoundError:  # renamed or removed by its writer meanwhile
            continue
        if in_use(path):
            live = "held by a running process (an import still writing it)"
        elif holder is not None and path.parent == store.patch_parts.dir:
            live = f"the patches table is being written by {describe(holder)}"
        elif age < STALE_TMP_SECONDS:
            live = f"younger than {_age(STALE_TMP_SECONDS)}: it may be a running writer's"
        else:
            live = None
        out.append(Leftover(path, age, size, live))
    return out


def problems(found: list[Leftover]) -> list[Problem]:
    out = []
    for x in found:
        what = f"a leftover of an unfinished write ({_age(x.age_s)} old, {x.size / 1e6:.1f} MB)"
        fix = (f"{REPAIR} (removes it; nothing refers to it)" if x.live is None
               else f"none now: {x.live}; left alone (`mitoprobe store repair --yes` removes it once no writer can own it)")
        out.append(Problem(x.path, what, fix, "leftover", "warning"))
    return out


def repair(r, found: list[Leftover]) -> None:
    """Remove the leftovers no running writer owns; say why each other one stays (``r``: ``integrity._Repair``)."""
    for x in found:
        if x.live is not None:
            r.act(x.path, "skip", x.live)
            continue

        def remove(a, p=x.path) -> None:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

        r.act(x.path, "remove", f"a leftover of an unfinished write, {_age(x.age_s)} old, {x.size / 1e6:.1f} MB", remove)
