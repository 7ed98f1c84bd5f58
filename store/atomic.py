"""Crash-safe writes: everything goes to a temporary path in the same folder, then is renamed.

``os.replace`` is atomic on POSIX, so a reader sees either the old file or the new one, never a
half-written one. Temporary names start with ``.tmp-`` and are ignored (and swept) by readers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None], *, _before_rename: Callable[[], None] | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``.

    ``_before_rename`` is a test hook that lets tests simulate a crash between write and rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        write(tmp)
        if tmp.is_file():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if _before_rename is not None:
            _before_rename()
        if tmp.is_dir() and path.exists():
            # Directories cannot be replaced atomically over a non-empty target: swap via a
            # second rename so the old copy stays readable until the new one is in place.
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
    return path


def write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> Path:
    """Write a Parquet file atomically (zstd-compressed)."""
    kwargs.setdefault("compression", "zstd")
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **kwargs))


def write_json(obj: Any, path: str | Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


STALE_TMP_SECONDS = 3600.0


def sweep_tmp(folder: str | Path, older_than_s: float = STALE_TMP_SECONDS) -> int:
    """Remove leftovers of interrupted writes; returns how many were removed.

    Only writers call this, and only for leftovers older than ``older_than_s``: a younger
    ``.tmp-*`` may belong to another process writing right now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    cutoff = time.time() - older_than_s
    for p in folder.glob(f"{TMP_PREFIX}*"):
        try:
            if p.stat().st_mtime > cutoff:
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n
