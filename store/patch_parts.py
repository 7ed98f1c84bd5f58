"""The ``patches`` table as parts: an import writes only its new rows, never the whole table again.

Layout (store format 2)::

    patches/MANIFEST.json          {"format": 2, "parts": [{"file", "rows", "datasets": {name: rows}}, ...]}
    patches/part-<time>-<id>.parquet   one import's rows of one dataset (row groups of ROW_GROUP rows)

The table is the union of the parts the manifest lists, in its order. ``MANIFEST.json`` is the
commit point: a new part is written under a ``.tmp-`` name, renamed into place, and becomes part of
the table only when the manifest naming it is atomically replaced; a part left unlisted by a crash in
between is reported by ``store check`` and removed by ``store repair`` or the next import's commit.
Files a commit drops from the manifest are deleted after it.

Stores written before (format 1) hold one ``patches.parquet`` at the top; ``store/migrations.py``
says how readers see it (the only part) and migrates it on the first write, in place: the manifest
lists ``../patches.parquet`` as the first part (nothing is moved or rewritten). Only a ``--replace``
touching its datasets ever rewrites (or drops) that file. The manifest's ``format`` is checked on
every read (a newer one is refused: ``StoreFormatError``).

Memory: metadata (every column but ``png``) is read whole (~1 kB a patch); PNG bytes are only ever
read a row group at a time (:meth:`PatchParts.iter_images`), so no reader holds every PNG.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import migrations, paths, schema
from .atomic import (COMPRESSION, READ_ERRORS, TMP_PREFIX, damaged, hold, let_go, make_dirs, read_guard, remove_dirs,
                     sweep_tmp, write_json)
from .memory import releasing

PATCHES_DIR = paths.PATCHES_DIR
MANIFEST = paths.MANIFEST
PNG_READERS = 4  # row groups ``PatchParts.pngs`` reads at once
PNG_BATCH = 64  # rows ``PatchParts.pngs`` decodes at a time, up to the last one it wants in a row group
PNG_READ_BUFFER = 1 << 20  # bytes read from a PNG column chunk at a time: without it the ~30 MB chunk is read whole
# (12 scattered thumbnails at 200,000 patches: 64-121 ms instead of 101-160 warm, 162-252 instead of 255-272 cold)
ROW_GROUP = 1024  # rows per row group: ~30 MB of 128x128 PNGs, the unit every PNG reader reads
# PNGs are unique blobs: a dictionary for them is tried, abandoned and paid for on every read. Plain-encoded,
# one row group's PNGs read in ~9 ms instead of ~24 (~67 for a file's first) and are written in half the
# time (docs/benchmarks.md, "Cohort scale, round 3"); the other columns keep their dictionaries.
NO_DICTIONARY = ("png",)


def new_part_name() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"


class Locations(NamedTuple):
    """Where patches are stored, one entry per asked id (``PatchParts.locate``): ``part`` indexes ``parts``
    (-1: not stored), ``group``/``row`` are its row group and its row in that group; ``png_bytes`` estimates
    its stored PNG's size (its row group's ``png`` column bytes / rows, from the footer)."""

    parts: list[Path]
    part: np.ndarray
    group: np.ndarray
    row: np.ndarray
    png_bytes: np.ndarray


class PatchParts:
    """Where the patches table's parts are, and how to read them without holding every PNG."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / PATCHES_DIR
        self.manifest_path = self.dir / MANIFEST
        # a part beside patches/: a format-1 store's one file, kept in place by its migration
        self.legacy_path = self.root / paths.PATCHES_FILE

    # -- what is stored --------------------------------------------------------------------
    def _unmigrated(self) -> list[dict]:
        """A format-1 store's entries (``store.migrations``); [] when there is a manifest or no table."""
        return [] if self.manifest_path.is_file() else migrations.format1_parts(self.root)

    def exists(self) -> bool:
        return self.manifest_path.is_file() or bool(self._unmigrated())

    @property
    def anchor(self) -> Path:
        """The file whose replacement marks every change of the table (the manifest, else a format-1 file)."""
        old = self._unmigrated()
        return self.path_of(old[0]) if old else self.manifest_path

    def entries(self) -> list[dict]:
        """The manifest's part entries (``file``, ``rows``, ``datasets``); a format-1 store's as
        ``store.migrations`` reads it. [] when nothing is stored. A manifest of a newer format raises
        ``StoreFormatError``."""
        if not self.manifest_path.is_file():
            return migrations.format1_parts(self.root)
        with read_guard(self.manifest_path, errors=(OSError, ValueError)):
            doc = json.loads(self.manifest_path.read_text())
        parts = doc.get("parts") if isinstance(doc, dict) else None
        if not isinstance(parts, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                                  for e in parts):
            raise damaged(self.manifest_path, "no list of parts with a 'file' each", "is not a patches manifest")
        migrations.format_in(doc, self.manifest_path)
        return parts

    def path_of(self, entry: dict) -> Path:
        """A part's path: ``patches/<file>``, or ``<store>/<name>`` for ``../<name>`` (a part beside the folder)."""
        name = entry["file"]
        return self.root / name[3:] if name.startswith("../") else self.dir / name

    def entry_of(self, path: Path) -> dict:
        """The manifest entry of a part file (its rows per dataset, read from its ``dataset`` column)."""
        with read_guard(path):
            counts = dataset_counts(pq.read_table(path, columns=["dataset"])["dataset"])
        name = path.name if path.parent == self.dir else f"../{path.name}"
        return dict(file=name, rows=sum(counts.values()), datasets=counts)

    def part_paths(self) -> list[Path]:
        return [self.path_of(e) for e in self.entries()]

    def unlisted(self) -> list[Path]:
        """Part files in ``patches/`` the manifest does not list (an import killed before its commit)."""
        if not self.dir.is_dir():
            return []
        listed = {p.name for p in self.part_paths() if p.parent == self.dir}
        return sorted(p for p in self.dir.glob("part-*.parquet") if p.name not in listed)

    def stamp(self) -> tuple:
        """Changes whenever the table does (the anchor's inode, size and mtime): an import compares it
        at commit with what it read, so two imports never silently overwrite each other; the store's
        fingerprint (a cache key) uses it too."""
        try:
            st = self.anchor.stat()
        except FileNotFoundError:
            return (self.anchor.name, None)
        return (self.anchor.name, st.st_size, st.st_mtime_ns, st.st_ino)

    def sweep(self) -> int:
        """Remove what killed imports left in ``patches/``: unlisted parts (parts are renamed into
        place only under the patches lock, which the caller holds) and ``.tmp-`` files older than an
        hour that no live import holds (``atomic.sweep_tmp``). Returns how many went."""
        if not self.dir.is_dir():
            return 0
        gone = self.unlisted()
        for p in gone:
            p.unlink(missing_ok=True)
        return len(gone) + sweep_tmp(self.dir)

    def column_names(self) -> list[str]:
        """Columns of the table, in the schema's order: those some part has (an old store may lack an
        added column; a part lacking one that others have reads it as nulls)."""
        names: set[str] = set()
        for p in self.part_paths():
            with read_guard(p):
                names.update(pq.read_schema(p).names)
        return [n for n in schema.PATCHES.names if n in names]

    # -- reading ---------------------------------------------------------------------------
    @releasing
    def read(self, columns: list[str], entries: list[dict] | None = None, patch_ids=None) -> pa.Table:
        """``columns`` of every part (or of ``entries``' parts), concatenated in manifest order (an added
        column a part lacks is null); only the rows of ``patch_ids`` when given: then each part's small
        ``patch_id`` column says which row groups hold them, and only those are read (a page's dozen
        patches of a 200,000-patch table read a dozen row groups, not every row of ``columns``)."""
        tables = []
        wanted = None if patch_ids is None else _id_array(patch_ids)
        for p in (self.part_paths() if entries is None else [self.path_of(e) for e in entries]):
            with read_guard(p):
                f = _open(p)
                cols = [c for c in columns if c in f.schema_arrow.names]
                if wanted is None:
                    t = f.read(columns=cols)
                else:
                    _, bounds, hit = _part_hits(p, wanted)
                    groups = np.unique(np.searchsorted(bounds, np.flatnonzero(hit), side="right") - 1).tolist()
                    t = f.read_row_groups(groups, columns=list(dict.fromkeys(["patch_id", *cols])))
                    t = t.filter(pc.is_in(t["patch_id"], value_set=wanted.cast(t["patch_id"].type))).select(cols)
            tables.append(_with_columns(t, columns, str(p)))
        if not tables:
            return _with_columns(pa.table({}), columns, str(self.dir))
        return pa.concat_tables(tables)

    def row_group_ids(self, patch_ids: Iterable[str] | None = None) -> list[tuple[Path, int, list[str]]]:
        """(part, row group, ids) of the row groups holding ``patch_ids`` (every row group when None), with
        the wanted ids each holds, from the parts' small ``patch_id`` columns: the unit a streaming reader
        (the embedder's workers, Ray tasks) reads."""
        wanted = None if patch_ids is None else _id_array(patch_ids)
        out: list[tuple[Path, int, list[str]]] = []
        for p in self.part_paths():
            with read_guard(p):
                ids, bounds, hit = _part_hits(p, wanted)
            for g in range(len(bounds) - 1):
                chunk = ids.slice(bounds[g], bounds[g + 1] - bounds[g])
                if hit is not None:
                    chunk = chunk.filter(pa.array(hit[bounds[g]:bounds[g + 1]]))
                if len(chunk):
                    out.append((p, g, chunk.to_pylist()))
        return out

    def locate(self, patch_ids: Iterable[str]) -> Locations:
        """(part, row group, row) of each of ``patch_ids``, in their order, from the parts' ``patch_id`` columns and
        footers (no PNG is read): what a reader of single patches in any order needs (fine-tuning's DataLoader
        workers, ``finetune.data.StoredPngs``; a page's thumbnails, ``pngs``). Memory: the ids (each part's kept,
        ``_part_ids``); parts are immutable, so the locations hold until an import drops the part."""
        wanted = pa.array(list(map(str, patch_ids)), pa.string())
        n = len(wanted)
        out = Locations([], np.full(n, -1, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32),
                        np.zeros(n, np.int64))
        for p in self.part_paths():
            todo = np.flatnonzero(out.part < 0)
            if not len(todo):
                break
            asked = wanted.take(pa.array(todo))
            with read_guard(p):
                ids, bounds, held = _part_hits(p, asked)  # the part's ids scanned, only the few asked hashed
                md = _footer(str(p), *_file_key(p))
            held = np.flatnonzero(held)
            if not len(held):
                continue
            at = pc.index_in(asked, value_set=ids.take(pa.array(held))).to_numpy(zero_copy_only=False)
            found = ~np.isnan(at)
            png = md.schema.names.index("png")
            rows = np.array([md.row_group(g).num_rows for g in range(md.num_row_groups)], np.int64)
            sizes = np.array([md.row_group(g).column(png).total_compressed_size for g in range(md.num_row_groups)])
            starts = bounds[:-1]
            pos = held[at[found].astype(np.int64)]
            group = np.searchsorted(starts, pos, side="right") - 1
            hit = todo[found]
            out.part[hit], out.group[hit], out.row[hit] = len(out.parts), group, pos - starts[group]
            out.png_bytes[hit] = sizes[group] // np.maximum(rows[group], 1)
            out.parts.append(p)
        return out

    def iter_images(self, patch_ids: Iterable[str] | None = None, columns: tuple[str, ...] = ("patch_id", "png"),
                    ) -> Iterator[pa.Table]:
        """``columns`` (with ``png``) a row group at a time: every row, or only ``patch_ids``' rows
        (row groups holding none of them are not read). Memory: one row group."""
        for path, g, ids in self.row_group_ids(patch_ids):
            t = read_row_group(path, g, columns, None if patch_ids is None else ids)
            if t.num_rows:
                yield t

    def pngs(self, patch_ids: Iterable[str]) -> dict[str, bytes]:
        """PNG bytes by patch id for a few patches (ids not stored are left out), for a page of thumbnails:
        each row group holding some is decoded only up to the last of them (``_group_pngs``), ``PNG_READERS``
        row groups at once (Arrow decodes without the GIL). A dozen patches in ~0.1 s instead of ~0.3 s at
        200,000 patches, where reading their row groups whole meant 30 MB a thumbnail."""
        ids = list(map(str, patch_ids))
        loc = self.locate(ids)
        jobs = []
        for part, group in dict.fromkeys(zip(loc.part[loc.part >= 0].tolist(), loc.group[loc.part >= 0].tolist())):
            mine = np.flatnonzero((loc.part == part) & (loc.group == group))
            mine = mine[np.argsort(loc.row[mine], kind="stable")]
            jobs.append((loc.parts[part], group, loc.row[mine].tolist(), [ids[i] for i in mine]))
        out: dict[str, bytes] = {}
        if jobs:
            with ThreadPoolExecutor(min(PNG_READERS, len(jobs))) as pool:
                for found in pool.map(lambda job: _group_pngs(*job), jobs):
                    out.update(found)
        return out

    # -- writing ---------------------------------------------------------------------------
    def commit(self, entries: list[dict]) -> list[Path]:
        """Make the table ``entries`` (their parts already in ``patches/``) in one atomic manifest
        replace; then delete the files no longer listed. Returns those files."""
        before = {str(self.path_of(e)) for e in self.entries()}
        self._write_manifest(entries)
        dropped = [Path(p) for p in sorted(before - {str(self.path_of(e)) for e in entries})]
        for p in dropped:
            p.unlink(missing_ok=True)
        return dropped

    def _write_manifest(self, entries: list[dict]) -> None:
        make_dirs(self.dir)
        write_json({"format": schema.SCHEMA_VERSION, "parts": entries}, self.manifest_path)


def _part_hits(path: Path, wanted: pa.Array | None) -> tuple[pa.ChunkedArray, np.ndarray, np.ndarray | None]:
    """A part's ids, its row groups' first rows, and which ids are ``wanted`` (one lookup a part; None: no
    selection). A format-1 part holds large_string ids: the wanted ones are cast to the column's type."""
    ids, bounds = _part_ids(str(path), *_file_key(path))
    if wanted is None:
        return ids, bounds, None
    return ids, bounds, pc.is_in(ids, value_set=wanted.cast(ids.type)).to_numpy(zero_copy_only=False)


def _file_key(path: Path) -> tuple[int, int, int]:
    s = os.stat(path)
    return s.st_size, s.st_mtime_ns, s.st_ino


def _open(path: Path, **kwargs) -> pq.ParquetFile:
    """A part opened with its footer parsed once per version of the file (``_footer``): a page's dozen
    single-patch reads each paid the parse (~10 ms for a 200-row-group part)."""
    return pq.ParquetFile(path, metadata=_footer(str(path), *_file_key(path)), **kwargs)


@functools.lru_cache(maxsize=32)  # a 200-row-group part's footer is ~0.5 MB on disk, a few MB parsed
def _footer(path: str, size: int, mtime_ns: int, ino: int) -> pq.FileMetaData:
    return pq.read_metadata(path)


@functools.lru_cache(maxsize=256)
def _part_ids(path: str, size: int, mtime_ns: int, ino: int) -> tuple[pa.ChunkedArray, np.ndarray]:
    """A part's ``patch_id`` column and its row groups' first rows, read once per version of the file: parts
    are written once and never changed in place, so a long-lived reader (the dashboard) looks patches up
    without reading the ids again (~10 MB for 200,000 patches)."""
    f = _open(Path(path))
    sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
    return f.read(columns=["patch_id"])["patch_id"], np.cumsum([0, *sizes])


def _id_array(patch_ids: Iterable[str]) -> pa.Array:
    if isinstance(patch_ids, (pa.Array, pa.ChunkedArray)):
        return patch_ids
    return pa.array(list(dict.fromkeys(map(str, patch_ids))), pa.string())


def read_row_group(path: Path, group: int, columns=("patch_id", "png"), wanted=None) -> pa.Table:
    """One row group of one part (only ``wanted`` ids' rows when given); ``DamagedStoreError`` naming
    the part when it cannot be read. Opens the file itself: callable from a worker process."""
    with read_guard(path):
        t = _open(path).read_row_group(group, columns=list(columns))
    if wanted is not None:
        t = t.filter(pc.is_in(t["patch_id"], value_set=_id_array(wanted)))
    return t


def _group_pngs(path: Path, group: int, rows: list[int], ids: list[str]) -> dict[str, bytes]:
    """The PNGs at ``rows`` (increasing; ``ids`` theirs) of one row group, decoded ``PNG_BATCH`` rows at a time
    and no further than the last of them (half a row group on average, not all ~30 MB of it)."""
    out: dict[str, bytes] = {}
    seen = 0
    todo = iter(zip(rows, ids))
    row, pid = next(todo)
    with read_guard(path):
        f = _open(path, pre_buffer=False, buffer_size=PNG_READ_BUFFER)
        for batch in f.iter_batches(batch_size=PNG_BATCH, row_groups=[group], columns=["png"], use_threads=False):
            png = batch.column(0)
            while row < seen + batch.num_rows:
                out[pid] = png[row - seen].as_py()
                row, pid = next(todo, (None, None))
                if row is None:
                    return out
            seen += batch.num_rows
    return out


def dataset_counts(datasets: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    vc = pc.value_counts(datasets)
    return {v["values"].as_py(): int(v["counts"].as_py()) for v in vc}


def _with_columns(t: pa.Table, columns: list[str], where: str) -> pa.Table:
    """``t`` with exactly ``columns`` in the patches schema's types (absent added columns as nulls)."""
    fields = [schema.PATCHES.field(c) for c in columns]
    out = schema.validate(t, pa.schema(fields), where, fill_missing=True)
    return out.replace_schema_metadata(None)


class PartWriter:
    """Writes one new part: rows arrive in any number of tables and leave in row groups of ``ROW_GROUP``;
    the file is a ``.tmp-`` sibling until :meth:`finish` renames it to its part name, held (``atomic.hold``)
    until then so that ``store repair`` never removes a live import's staging."""

    def __init__(self, parts: PatchParts, dataset: str):
        self.created = make_dirs(parts.dir)  # folders this writer made: removed again by abort()
        self.parts, self.dataset = parts, dataset
        self.name = new_part_name()
        self.tmp = parts.dir / f"{TMP_PREFIX}{self.name}"
        self._writer: pq.ParquetWriter | None = None
        self._held: int | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.rows = 0
        self.bytes = 0

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self._pending.append(schema.validate(table, schema.PATCHES, str(self.tmp)).replace_schema_metadata(None))
        self._pending_rows += table.num_rows
        while self._pending_rows >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def _flush(self, n: int | None = None) -> None:
        t = pa.concat_tables(self._pending)
        head, rest = (t, None) if n is None else (t.slice(0, n), t.slice(n))
        if self._writer is None:
            self.created += make_dirs(self.parts.dir)  # again: another writer's abort may have removed it
            self._writer = pq.ParquetWriter(self.tmp, schema.PATCHES, compression=COMPRESSION, use_dictionary=[
                c for c in schema.PATCHES.names if c not in NO_DICTIONARY])
            self._held = self._held if self._held is not None else hold(self.tmp)
        self._writer.write_table(head, row_group_size=ROW_GROUP)
        self.rows += head.num_rows
        self._pending = [rest] if rest is not None and rest.num_rows else []
        self._pending_rows = 0 if rest is None else rest.num_rows

    def close(self) -> Path | None:
        """Flush and close the file, still under its ``.tmp-`` name (None when it got no rows)."""
        if self._pending_rows:
            self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
        return self.tmp if self.rows else None

    def finish(self) -> dict | None:
        """Close and rename into ``patches/``; the part's manifest entry (None when it got no rows)."""
        if self.close() is None:
            return None
        final = self.parts.dir / self.name
        os.replace(self.tmp, final)
        let_go(self._held)
        self._held = None
        self.bytes = final.stat().st_size
        return dict(file=self.name, rows=self.rows, datasets={self.dataset: self.rows})

    def abort(self) -> None:
        """Remove whatever this writer wrote (its temp file or its renamed part) and the folders it made."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.tmp.unlink(missing_ok=True)
        (self.parts.dir / self.name).unlink(missing_ok=True)
        let_go(self._held)
        self._held = None
        remove_dirs(self.created)


def copy_rows(sources: list[Path], writer: PartWriter,
              select: Callable[[pa.Table], pa.Table]) -> None:
    """Stream every row group of ``sources`` through ``select`` into ``writer`` (memory: one row group)."""
    for p in sources:
        with read_guard(p):
            f = pq.ParquetFile(p)
            for g in range(f.metadata.num_row_groups):
                t = _with_columns(f.read_row_group(g), list(schema.PATCHES.names), str(p))
                writer.write(select(t))


def readable(path: Path) -> str | None:
    """None when ``path`` reads as Parquet in full (every row group), else why not. Memory: one row group."""
    try:
        f = pq.ParquetFile(path)
        for g in range(f.metadata.num_row_groups):
            f.read_row_group(g)
    except READ_ERRORS as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None

