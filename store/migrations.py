"""The store's format: the stamp every store carries, the refusal of a newer one, the migration of older ones.

Why (as DuckDB writes its storage version and refuses one it does not know): a store written by a newer
mitoprobe must be refused with one line, never misread; a store written by an older one is read as it
is and brought up to date by this module, the only one that knows an old format.

* The number is ``schema.SCHEMA_VERSION``. ``<store>/FORMAT.json`` (``{"format": N, "mitoprobe": version}``)
  records it, and so does the patches manifest (its ``"format"``).
* Every open (``Store(...)``: every command, ``mitoprobe.open``) runs :func:`format_of`, which raises
  :class:`StoreFormatError` for a stamp or manifest newer than this mitoprobe. Reading never writes.
* A store without a stamp (made before stamps, or not written yet) is the format its files show: its
  manifest's, else 1 when it holds a top-level ``patches.parquet``, else the current one.
* Readers see a format-1 store as format 2 through :func:`format1_parts`. The first write that succeeds
  migrates it (:func:`upgrade`, after the write: ``STEPS`` under the patches lock, each one atomic
  replace) and stamps the store; an import's commit writes the migrated manifest itself
  (:func:`migrated_entries`), so its parts and the migration land in one replace. A failing command
  therefore leaves the store as it found it.

Formats: 1 = one ``patches.parquet``; 2 = ``patches/part-*.parquet`` + ``patches/MANIFEST.json`` (a
migrated store keeps its ``patches.parquet`` in place, listed first as ``../patches.parquet``).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import paths, schema
from .atomic import damaged, read_guard, write_json
from .errors import DamagedStoreError, StoreError, StoreFormatError
from .lock import patches_lock

if TYPE_CHECKING:
    from .patch_parts import PatchParts

log = logging.getLogger(__name__)

FORMAT_FILE = paths.FORMAT_FILE
CURRENT = schema.SCHEMA_VERSION
FORMAT1_ENTRY = f"../{paths.PATCHES_FILE}"  # a format-1 store's one file, as the manifest lists it


def version() -> str:
    """This mitoprobe's version (what a stamp records and a refusal names)."""
    try:
        return importlib.metadata.version("mitoprobe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def stamp_path(root: str | Path) -> Path:
    return Path(root) / FORMAT_FILE


def _manifest_path(root: str | Path) -> Path:
    return Path(root) / paths.PATCHES_DIR / paths.MANIFEST


def format_in(doc: Any, path: Path) -> int:
    """The ``format`` a parsed stamp or manifest records: ``StoreFormatError`` when newer than this
    mitoprobe reads, ``DamagedStoreError`` when it is not a format number."""
    n = doc.get("format") if isinstance(doc, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise damaged(path, f"its format is {n!r}", "records no store format")
    if n > CURRENT:
        by = f"mitoprobe {doc['mitoprobe']}" if isinstance(doc.get("mitoprobe"), str) else "a newer mitoprobe"
        raise StoreFormatError(f"{path}: this store is format {n}, written by {by}; this mitoprobe ({version()}) "
                               f"reads formats <= {CURRENT}: upgrade mitoprobe (pip install -U mitoprobe)")
    return n


def _read_format(path: Path) -> int | None:
    """The format ``path`` records (None: no such file); raises as :func:`format_in`."""
    with read_guard(path, errors=(OSError, ValueError)):
        try:
            text = path.read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
        doc = json.loads(text)
    return format_in(doc, path)


def _known(path: Path) -> int | None:
    """As :func:`_read_format`, None for a file that cannot be read: the readers and ``store check``
    report that damage (an open must not fail on it, or ``store check`` could not run)."""
    try:
        return _read_format(path)
    except DamagedStoreError:
        return None


def stamp_error(root: str | Path) -> str | None:
    """Why ``FORMAT.json`` cannot be read (None: it reads, or there is none), for ``store check``."""
    try:
        _read_format(stamp_path(root))
    except DamagedStoreError as exc:
        return getattr(exc, "reason", str(exc))
    return None


def format_of(root: str | Path) -> int:
    """The store's format, what every open checks (reads two small files, writes nothing): the older of
    its stamp and what its files show, so a stamp never hides an old layout. Raises
    ``StoreFormatError`` when either is newer than this mitoprobe."""
    root = Path(root)
    stamp, manifest = _known(stamp_path(root)), _known(_manifest_path(root))
    files = manifest if manifest is not None else _files_format(root)
    return min(stamp or files, files)


def _files_format(root: Path) -> int:
    """What a store without a readable manifest shows: 1 for a lone top-level ``patches.parquet``, else
    the current format (no patches yet, or a damaged or unreadable manifest: the readers report that)."""
    try:
        lone = not _manifest_path(root).exists() and bool(format1_parts(root))
    except OSError:
        lone = False
    return 1 if lone else CURRENT


# -- format 1 ---------------------------------------------------------------------------------
def format1_parts(root: str | Path) -> list[dict]:
    """A format-1 store's patches table as format 2 lists it, for readers: its one file as the only
    part (``rows``/``datasets`` None: unknown until migrated); [] when it has no such file."""
    if not (Path(root) / paths.PATCHES_FILE).is_file():
        return []
    return [dict(file=FORMAT1_ENTRY, rows=None, datasets=None)]


def format1_to_2(parts: PatchParts) -> list[dict]:
    """Format 1 -> 2: the manifest entries of a store holding one ``patches.parquet``, which stays where
    it is as the first part, with its rows per dataset (what format 2 records). Reads; writes nothing."""
    return [dict(parts.entry_of(Path(parts.root) / paths.PATCHES_FILE), file=FORMAT1_ENTRY)]


def _write_format1_to_2(parts: PatchParts) -> None:
    parts.commit(format1_to_2(parts))  # one atomic manifest write; nothing is moved or deleted


STEPS: dict[int, Callable[[PatchParts], None]] = {1: _write_format1_to_2}  # format N -> N+1, every file


# -- writers ----------------------------------------------------------------------------------
def migrated_entries(parts: PatchParts) -> list[dict] | None:
    """For a writer whose own commit writes the patches manifest (an import): the entries the store's
    migration would write, to start from; None when the store is current."""
    return format1_to_2(parts) if format_of(parts.root) == 1 else None


def upgrade(parts: PatchParts) -> None:
    """After a write succeeded: migrate an older store to the current format and stamp it (the first
    writer does it, once). Never fails that write: a store it cannot migrate now (another process holds
    the patches lock, a damaged file) stays readable as it is, and the next write tries again."""
    root = Path(parts.root)
    if format_of(root) == CURRENT and stamp_path(root).exists():
        return  # a damaged stamp is left to `store check` / `store repair`, never overwritten
    try:
        with patches_lock(root):
            while (n := format_of(root)) < CURRENT:
                STEPS[n](parts)
                log.info("%s: migrated the store from format %d to %d", root, n, n + 1)
            if not stamp_path(root).exists():
                write_json({"format": CURRENT, "mitoprobe": version()}, stamp_path(root))
    except StoreFormatError:
        raise
    except StoreError as exc:
        log.warning("%s: not brought to format %d now (%s); the next write tries again", root, CURRENT, exc)
