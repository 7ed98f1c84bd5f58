"""How an import changes the parted ``patches`` table: stage new rows while scanning, then commit.

The scan (``store.dataset`` / ``store.cohort``) hands each checked row to :class:`Staging`, which
writes the rows whose patch id is not stored yet into one new part per dataset, a row group at a
time: the import never holds the PNGs. :func:`commit_import` then compares the scanned metadata (a
file: ``store.scanned``, read a batch at a time, so memory does not grow with the import) with the
stored metadata and either

* changes nothing (same patches: the staged parts are removed),
* adds the staged parts (new patches only: bytes written = the new rows),
* or, with ``replace``, rewrites the imported datasets: their new rows plus the kept stored rows
  (pixels streamed from the old parts, metadata from the scan) in one part each, and the old parts
  holding them are dropped, or rewritten without them when they also hold other datasets' rows,

refusing (``StoreError``) to drop or change stored patches without ``replace``. On any error every
staged file is removed and the store is byte-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import migrations, schema
from .atomic import env_errors
from .dataset import patch_difference
from .errors import StoreError
from .patch_parts import PartWriter, PatchParts, copy_rows
from . import scanned
from .scanned import ScannedRows

STAGE_ROWS = 256  # rows buffered before they go to the staged part's writer


class Staging:
    """The scans' sink: stages rows of patch ids not in ``known`` as new parts (one per dataset)."""

    def __init__(self, parts: PatchParts, known: set[str]):
        self.parts, self.known = parts, known
        self.writers: dict[str, PartWriter] = {}
        self._rows: dict[str, list[dict]] = {}

    def __call__(self, row: dict) -> None:
        if row["patch_id"] in self.known:
            return
        buf = self._rows.setdefault(row["dataset"], [])
        buf.append(row)
        if len(buf) >= STAGE_ROWS:
            self._flush(row["dataset"])

    def _flush(self, dataset: str) -> None:
        rows = self._rows.pop(dataset, [])
        if rows:
            if dataset not in self.writers:
                with env_errors(self.parts.dir):
                    self.writers[dataset] = PartWriter(self.parts, dataset)
            self.writers[dataset].write(pa.Table.from_pylist(rows, schema=schema.PATCHES))

    def finish(self) -> dict[str, PartWriter]:
        for d in list(self._rows):
            self._flush(d)
        return self.writers

    def abort(self) -> None:
        self._rows.clear()
        for w in self.writers.values():
            w.abort()


OTHERS_COLUMNS = ["patch_id", "dataset", "relpath", "content_sha256"]  # what an import needs of other datasets


@dataclass
class StoredPatches:
    """The stored table as an import of ``datasets`` sees it: their rows' metadata in full, the other
    datasets' rows as ``OTHERS_COLUMNS`` only (ids must stay unique, pixels shared with them are said):
    the import's memory grows with the store by ~100 bytes a patch, not by its whole metadata."""

    meta: pa.Table | None  # every column but png, rows of the imported datasets (None: nothing stored)
    others: pa.Table | None = None  # OTHERS_COLUMNS of every other row
    entries: list[dict] = field(default_factory=list)
    stamp: tuple = ()  # ``PatchParts.stamp()`` when read: the commit checks nobody changed the table since

    def ids(self) -> set[str]:
        """Every stored patch id (the scan stages only rows whose id is not among them)."""
        if self.meta is None:
            return set()
        return set(self.meta["patch_id"].to_pylist()) | set(self.others["patch_id"].to_pylist())


def read_stored(parts: PatchParts, datasets: set[str]) -> StoredPatches:
    """The stored metadata as an import of ``datasets`` needs it (a part holding none of their rows is
    read for ``OTHERS_COLUMNS`` only). The caller has run the writers' preflight (``integrity.preflight``):
    a damaged table was refused before; damage only a full read finds raises ``DamagedStoreError`` here."""
    stamp = parts.stamp()
    if not parts.exists():
        return StoredPatches(None, stamp=stamp)
    entries = parts.entries()
    full, light = [], []
    for e in entries:
        if e.get("datasets") is not None and not set(e["datasets"]) & datasets:
            light.append(parts.read(OTHERS_COLUMNS, [e]))
        else:
            t = parts.read(list(schema.PATCH_COLUMNS), [e])
            mine = _in(t["dataset"], datasets)
            full.append(t.filter(mine))
            light.append(t.filter(pc.invert(mine)).select(OTHERS_COLUMNS))
    if not entries:
        return StoredPatches(None, None, [], stamp)
    empty = pa.schema([f for f in schema.PATCH_METADATA])
    meta = pa.concat_tables(full) if full else empty.empty_table()
    return StoredPatches(meta, pa.concat_tables(light), entries, stamp)


@dataclass
class Written:
    """What a commit wrote: the new part files and their bytes (the figures an import reports)."""

    files: list[Path] = field(default_factory=list)
    bytes: int = 0
    dropped: list[Path] = field(default_factory=list)
    migrated: bool = False


def _in(column: pa.ChunkedArray, values) -> pa.Array:
    return pc.is_in(column, value_set=pa.array(sorted(values), pa.string()))


def _with_metadata(meta: pa.Table):
    """A row selector for ``copy_rows``: rows whose id is in ``meta``, their metadata taken from it."""
    ids = meta["patch_id"]

    def select(t: pa.Table) -> pa.Table:
        t = t.filter(pc.is_in(t["patch_id"], value_set=ids))
        if not t.num_rows:
            return t
        rows = meta.take(pc.index_in(t["patch_id"], value_set=ids))
        cols = {n: (t["png"] if n == "png" else rows[n]) for n in schema.PATCHES.names}
        return pa.table(cols, schema=schema.PATCHES)
    return select


def commit_import(parts: PatchParts, stored: StoredPatches, staging: Staging, new: ScannedRows,
                  datasets: set[str], replace: bool, lock) -> Written | None:
    """Make ``new`` (the scan's rows) the whole of ``datasets`` in the table; None when nothing
    changes. Raises ``StoreError`` (nothing changed) for drops/changes without ``replace``, for patch
    ids another dataset already holds, and when another import changed the table since ``stored``
    was read. ``lock``: the patches lock (not taken yet), held from the check to the manifest write."""
    writers = staging.finish()
    try:
        plan = _plan(stored, new, datasets, replace)
        if plan is None:
            staging.abort()
            return None
        with lock:
            if parts.stamp() != stored.stamp:
                raise StoreError(f"{parts.dir}: another import changed the patches table while this one ran; "
                                 "nothing was changed by this one: run it again")
            parts.sweep()
            return _write(parts, stored, writers, new, datasets, plan)
    except BaseException:
        staging.abort()
        raise


def _plan(stored: StoredPatches, new: ScannedRows, datasets: set[str], replace: bool) -> str | None:
    """"add" (new rows only), "replace" (rewrite ``datasets``) or None (no change)."""
    if stored.meta is None:
        return "add"
    mine, others = stored.meta, stored.others
    held = others["patch_id"].combine_chunks()
    n = sum(pc.sum(pc.is_in(t["patch_id"], value_set=held).cast(pa.int64())).as_py() or 0
            for t in new.batches(["patch_id"]))
    if n:
        raise StoreError(f"{parts_where(stored)}: the import would store {n} patch id(s) twice (already held by "
                         "another dataset); nothing was changed")
    diff = patch_difference(mine, new)
    if not (diff.only_new or diff.only_old or diff.changed):
        return None
    if (diff.only_old or diff.changed) and not replace:
        raise StoreError(
            f"{parts_where(stored)}: this import would drop {diff.only_old} and change {diff.changed} of the "
            f"{mine.num_rows} stored patches of {sorted(datasets)} (stored vectors, folds and results "
            "refer to them by patch id); nothing was changed. `mitoprobe data import --replace` allows it")
    return "replace" if diff.only_old or diff.changed else "add"


def parts_where(stored: StoredPatches) -> str:
    return "the stored patches" if not stored.entries else f"the patches table ({len(stored.entries)} part(s))"


def _write(parts: PatchParts, stored: StoredPatches, writers: dict[str, PartWriter], new: ScannedRows,
           datasets: set[str], plan: str) -> Written:
    out = Written()
    made: list[PartWriter] = []  # every part this commit writes: removed again if it fails before the manifest
    try:
        entries, out.migrated = _stored_entries(parts, stored)
        touched = [e for e in entries if plan == "replace" and set(e["datasets"]) & datasets]
        keep = [e for e in entries if e not in touched]
        added = []
        stored_ids = None if stored.meta is None else pa.chunked_array(
            [*stored.meta["patch_id"].chunks, *stored.others["patch_id"].chunks], pa.large_string()).combine_chunks()
        for d in new.datasets():
            staged = writers.get(d)
            if plan == "add" and staged is not None and _staged_matches(staged, _Cursor(_rows_of(new, d, stored_ids))):
                made.append(staged)
                added.append(staged.finish())
                continue
            # a new part for d: staged rows (metadata from the scan) + under replace the kept stored rows
            w = PartWriter(parts, d)
            made.append(w)
            if staged is not None:
                copy_rows([staged.close()], w, _with_scanned(_Cursor(_rows_of(new, d, stored_ids)), staged.close()))
                staged.abort()
            if plan == "replace" and stored.meta is not None:
                known = _kept_rows(new, d, stored.meta["patch_id"].combine_chunks())
                copy_rows([parts.path_of(e) for e in touched if d in e["datasets"]], w, _with_metadata(known))
            added.append(w.finish())
        for e in touched:  # old parts that also hold other datasets' rows: rewritten without ours
            for d in (k for k in e["datasets"] if k not in datasets):
                w = PartWriter(parts, d)
                made.append(w)
                copy_rows([parts.path_of(e)], w, lambda t, d=d: t.filter(pc.equal(t["dataset"], d)))
                keep.append(w.finish())
        final = _ordered([e for e in keep + added if e is not None])
        out.dropped = parts.commit(final)
    except BaseException:
        for w in made:
            w.abort()
        raise
    out.files = [parts.dir / w.name for w in made if w.rows]
    out.bytes = sum(w.bytes for w in made if w.rows)
    return out


def _stored_entries(parts: PatchParts, stored: StoredPatches) -> tuple[list[dict], bool]:
    """The entries of the readable stored parts, each with its rows per dataset, that the commit starts
    from; for an older store, those its migration writes (``store.migrations``; True: this commit
    migrates it, in the same manifest replace)."""
    if stored.meta is None:
        return [], False
    migrated = migrations.migrated_entries(parts)
    if migrated is not None:
        return migrated, True
    return parts.entries(), False


def _rows_of(new: ScannedRows, dataset: str, stored_ids: pa.Array | None) -> Iterator[pa.Table]:
    """The scan's rows of ``dataset`` whose id is not stored (those ``Staging`` staged), in scan order
    (the staged part's), a batch at a time."""
    for t in new.batches():
        keep = pc.equal(t["dataset"], dataset)
        if stored_ids is not None:
            keep = pc.and_(keep, pc.invert(pc.is_in(t["patch_id"], value_set=stored_ids)))
        t = t.filter(keep)
        if t.num_rows:
            yield t


def _kept_rows(new: ScannedRows, dataset: str, stored_ids: pa.Array) -> pa.Table:
    """The scan's rows of ``dataset`` that are stored already (``--replace`` rewrites them with this metadata,
    looked up by id: held whole, as Arrow)."""
    tables = [t.filter(pc.and_(pc.equal(t["dataset"], dataset), pc.is_in(t["patch_id"], value_set=stored_ids)))
              for t in new.batches()]
    return pa.concat_tables(tables) if tables else schema.PATCH_METADATA.empty_table()


class _Cursor:
    """Rows of a stream of tables, taken ``n`` at a time (a staged part's row group against the scan's rows)."""

    def __init__(self, tables: Iterator[pa.Table]):
        self._tables, self._head = tables, None

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows (fewer when the stream ends)."""
        got, have = [], 0
        while have < n:
            if self._head is None or not self._head.num_rows:
                self._head = next(self._tables, None)
                if self._head is None:
                    break
            t = self._head.slice(0, n - have)
            self._head = self._head.slice(t.num_rows)
            got.append(t)
            have += t.num_rows
        return pa.concat_tables(got) if got else schema.PATCH_METADATA.empty_table()

    def exhausted(self) -> bool:
        return not self.take(1).num_rows


def _staged_matches(staged: PartWriter, rows: _Cursor) -> bool:
    """Whether the staged rows (the dataset's new ones) already carry the scan's final metadata, ``rows``
    (a scan sets some columns, e.g. ``duplicate_group``, only once every row is seen); then the staged
    part is committed as written, else rewritten with it. Both are read a batch at a time, in step: the
    staged rows are the scan's new rows, in scan order."""
    f = pq.ParquetFile(staged.close())
    for b in f.iter_batches(batch_size=scanned.BATCH, columns=list(schema.PATCH_COLUMNS)):
        got = pa.Table.from_batches([b])
        if not got.equals(rows.take(got.num_rows).select(got.column_names)):
            return False
    return rows.exhausted()


def _with_scanned(rows: _Cursor, where: Path):
    """A row selector for ``copy_rows`` over a staged part: its pixels, the metadata of the scan's rows in step."""
    def select(t: pa.Table) -> pa.Table:
        meta = rows.take(t.num_rows)
        if not meta["patch_id"].equals(t["patch_id"]):
            raise StoreError(f"{where}: the staged rows are not the scan's new rows in scan order (a bug: "
                             "please report it); nothing was changed")
        cols = {n: (t["png"] if n == "png" else meta[n]) for n in schema.PATCHES.names}
        return pa.table(cols, schema=schema.PATCHES)
    return select


def _ordered(entries: list[dict]) -> list[dict]:
    """Benchmark datasets' parts first, in spec order, then the rest as they were (stable)."""
    from .datasets import BENCHMARK

    rank = {s.name: i for i, s in enumerate(BENCHMARK)}

    def key(e: dict) -> int:
        ds = list(e.get("datasets") or {})
        return min((rank.get(d, len(rank)) for d in ds), default=len(rank))
    return sorted(entries, key=key)
