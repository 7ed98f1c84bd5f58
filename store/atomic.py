"""Store I/O: crash-safe writes, and the two error translations every store reader and writer shares.

``os.replace`` is atomic on POSIX, so a reader sees either the old file or the new one, never a
half-written one. Temporary names start with ``.tmp-`` and are ignored (and swept) by readers.

Why the translations: a full disk, a read-only mount or a store path that is a file are conditions a
user fixes, so a write failing on them raises a one-line :class:`StoreError` naming the path and the
cause (:func:`env_errors`), after removing its temp file and the folders it created: the store stays
byte-identical. A file that cannot be read (a corrupt Parquet part, a truncated JSON) raises
:class:`DamagedStoreError` naming it and pointing at ``mitoprobe store check`` (:func:`read_guard`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DamagedStoreError, StoreError

TMP_PREFIX = ".tmp-"

# errno -> what it means for a store write (anything else is a bug and keeps its traceback)
ENV_ERRNOS = {
    errno.EROFS: "the store is on a read-only file system",
    errno.EACCES: "permission denied (the store or a folder in it is not writable)",
    errno.EPERM: "operation not permitted (the store or a folder in it is not writable)",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "a path in the store exists as a file where a folder is needed",
    errno.ENOTDIR: "a path in the store is a file where a folder is needed",
}
# what a corrupt or truncated file raises when read: ArrowInvalid (a ValueError), OSError (thrift,
# ArrowIOError), JSONDecodeError (a ValueError); LanceDB raises ValueError / RuntimeError
READ_ERRORS = (pa.ArrowException, OSError, ValueError, RuntimeError)
CHECK_HINT = "run `mitoprobe store check` to list the damage and `mitoprobe store repair` to fix it"


def _gist(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def damaged(path: str | Path, exc: BaseException | str, what: str = "cannot be read") -> DamagedStoreError:
    """The one-line error for a damaged stored file."""
    reason = exc if isinstance(exc, str) else _gist(exc)
    err = DamagedStoreError(f"{path} {what} ({reason}); the store is damaged: {CHECK_HINT}")
    err.path, err.reason = Path(path), f"{what} ({reason})"
    return err


@contextlib.contextmanager
def read_guard(path: str | Path, what: str = "cannot be read", errors: tuple = READ_ERRORS) -> Iterator[None]:
    """Turn a read failure of ``path`` into :class:`DamagedStoreError` (keep the block to the I/O call)."""
    try:
        yield
    except DamagedStoreError:
        raise
    except errors as exc:
        raise damaged(path, exc, what) from exc


def env_error(path: str | Path, exc: OSError) -> StoreError | None:
    """A :class:`StoreError` for an environment failure (read-only, full disk, a file in the way), else None."""
    cause = ENV_ERRNOS.get(exc.errno) if isinstance(exc, OSError) else None
    if cause is None:
        return None
    where = exc.filename or path
    return StoreError(f"cannot write {path}: {cause} ({exc.strerror or exc} at {where}); nothing in the "
                      "store was changed")


@contextlib.contextmanager
def env_errors(path: str | Path) -> Iterator[None]:
    """Raise :func:`env_error`'s ``StoreError`` for an environment ``OSError`` inside the block."""
    try:
        yield
    except OSError as exc:
        err = env_error(path, exc)
        if err is None:
            raise
        raise err from exc


def make_dirs(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created (outermost first) so a failed write can
    remove them again. Environment failures raise :func:`env_error`'s ``StoreError``."""
    missing = []
    p = Path(folder)
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    missing.reverse()
    with env_errors(folder):
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
        folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_dirs(created: list[Path]) -> None:
    """Undo :func:`make_dirs` (innermost first, only folders that are still empty)."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            break


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

    On failure the temp file and any folder this call created are removed; an environment
    ``OSError`` (read-only, full disk, a file in the way) becomes a ``StoreError`` naming ``path``.

    ``_before_rename`` is a test hook that lets tests simulate a crash between write and rename.
    """
    path = Path(path)
    created = make_dirs(path.parent)
    tmp = _tmp_sibling(path)
    ok = False
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
        ok = True
    except OSError as exc:
        err = env_error(path, exc)
        if err is None:
            raise
        raise err from exc
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        if not ok:
            remove_dirs(created)
    return path


COMPRESSION = "zstd"  # of every Parquet file the store writes


def write_parquet(table: pa.Table, path: str | Path, **kwargs: Any) -> Path:
    """Write a Parquet file atomically (zstd-compressed)."""
    kwargs.setdefault("compression", COMPRESSION)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp, **kwargs))


def write_json(obj: Any, path: str | Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    return atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))


STALE_TMP_SECONDS = 3600.0  # a temp file older than this belongs to no running writer (unless held: below)


def hold(path: Path) -> int | None:
    """Hold an OS lock on ``path`` (a temp file being written) until :func:`let_go`: the kernel drops it
    when the process dies, so a sweep tells a live writer's staging from a killed one's (:func:`in_use`).
    Returns the descriptor (None where ``flock`` is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the age rule alone applies
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock then: the age rule alone protects it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def let_go(fd: int | None) -> None:
    """Drop what :func:`hold` took (idempotent for None)."""
    if fd is not None:
        os.close(fd)


def in_use(path: str | Path) -> bool:
    """Whether a live process holds ``path`` (:func:`hold`); opens it read-only and changes nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the shared lock just taken
    return False


def sweep_tmp(folder: str | Path, older_than_s: float = STALE_TMP_SECONDS) -> int:
    """Remove leftovers of interrupted writes; returns how many were removed.

    Only writers call this, and only for leftovers older than ``older_than_s`` and not held by a live
    writer (:func:`in_use`): a younger ``.tmp-*`` may belong to another process writing right now.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    cutoff = time.time() - older_than_s
    for p in folder.glob(f"{TMP_PREFIX}*"):
        try:
            if p.stat().st_mtime > cutoff or in_use(p):
                continue
        except FileNotFoundError:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        n += 1
    return n
