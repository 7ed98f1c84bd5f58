"""The ``Store``: one folder holding patches, embedding sets and results, queried with DuckDB.

Every read that can meet a damaged file raises :class:`DamagedStoreError` naming it (``store/atomic.py``);
``Store.sql`` runs read-only statements only, on a connection that cannot touch files outside the store.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import integrity, migrations, paths, schema
from .atomic import damaged, env_errors, read_guard, sweep_tmp, write_parquet
from .cohort import scan_cohort
from .dataset import ImportScan, scan_benchmark, summarize_counts
from .datasets import BENCHMARK, DatasetSpec
from .errors import DamagedStoreError, StoreError
from .features import FeatureStore, part_rows, read_complete
from .lock import patches_lock
from .patch_import import Staging, Written, commit_import, read_stored
from .patch_parts import PatchParts, readable
from .results import RESULT_TABLES, ResultTables
from .scanned import ScannedRows

log = logging.getLogger(__name__)

PATCHES_FILE = paths.PATCHES_FILE
FOLDS_FILE = paths.FOLDS_FILE


class Fingerprint(NamedTuple):
    """What a store holds, cheaply: file names, sizes and mtimes, never Parquet contents.

    Three parts kept apart so a cache keyed on one is not evicted by the others: an embedding
    job adding parts changes ``sets`` only, appending a run changes ``results`` only.
    """

    patches: tuple  # patches/MANIFEST.json (or a format-1 patches.parquet): (name, size, mtime_ns, inode)
    results: tuple  # per result table, its part file names
    sets: tuple  # ((recipe_id, (COMPLETE's stat, part file names)), ...)

    def set(self, recipe_id: str) -> tuple:
        """The fingerprint of one embedding set (() when there is no such set)."""
        return dict(self.sets).get(recipe_id, ())


def _stat_key(p: Path) -> tuple:
    try:
        s = p.stat()
    except FileNotFoundError:
        return (p.name, None)
    return (p.name, s.st_size, s.st_mtime_ns, s.st_ino)  # an atomic replace changes the inode


def _part_names(folder: Path) -> tuple[str, ...]:
    """Names of the visible parts (``.tmp-*`` files are in-flight writes: not part of the state)."""
    try:
        return tuple(sorted(e.name for e in os.scandir(folder) if e.name.startswith("part-")
                            and e.name.endswith(".parquet")))
    except (FileNotFoundError, NotADirectoryError):
        return ()


_READ_ONLY = {"SELECT", "EXPLAIN"}  # DuckDB parses DESCRIBE, SHOW, SUMMARIZE, VALUES, FROM ... as SELECT
_EXPLAIN = re.compile(r"^\s*explain\s+(analy[sz]e\s+)?(\([^)]*\)\s*)?", re.IGNORECASE)


def check_read_only(query: str) -> None:
    """Refuse any statement but a query (``StoreError``), using DuckDB's own parser: ``EXPLAIN`` only
    of a query (``EXPLAIN ANALYZE`` runs its statement). A syntax error raises DuckDB's ParserException."""
    import duckdb

    statements = duckdb.extract_statements(query)
    if not statements:
        raise StoreError("empty query: give one SELECT (or EXPLAIN, DESCRIBE, SHOW, SUMMARIZE) statement")
    for st in statements:
        kind = st.type.name
        if kind == "EXPLAIN":
            inner = duckdb.extract_statements(_EXPLAIN.sub("", st.query, count=1))
            kind = "EXPLAIN " + ",".join(s.type.name for s in inner) if inner else "EXPLAIN"
            if len(inner) == 1 and inner[0].type.name == "SELECT":
                continue
        if kind not in _READ_ONLY:
            raise StoreError(f"refusing {kind}: `mitoprobe sql` runs read-only queries only (SELECT, "
                             "EXPLAIN, DESCRIBE, SHOW, SUMMARIZE); the store changes only through mitoprobe's "
                             "commands")


@dataclass
class ImportOutcome:
    changed: bool
    counts: pd.DataFrame
    notes: list[str]
    path: Path
    written: Written | None = None  # the new part files and their bytes (None: nothing written)


class Store:
    """Entry point of the library: ``Store(path)`` (default ``$MITOPROBE_STORE`` or ./mitoprobe-store).

    Opening checks the store's format (``store.migrations``): one written by a newer mitoprobe raises
    ``StoreFormatError``; an older one is read as it is and migrated by the first write."""

    def __init__(self, root: str | Path | None = None):
        self.root = paths.store_root(root)
        migrations.format_of(self.root)  # refuses a store of a newer format (StoreFormatError)
        self.features = FeatureStore(self.root)
        self.patch_parts = PatchParts(self.root)
        self.results = ResultTables(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- patches ---------------------------------------------------------------------------
    @property
    def patches_path(self) -> Path:
        """Where the patches table lives: ``patches/`` (its ``MANIFEST.json`` and parts,
        ``store.patch_parts``); a store written before parts has ``patches.parquet`` instead."""
        anchor = self.patch_parts.anchor
        return self.patch_parts.dir if anchor == self.patch_parts.manifest_path else anchor

    def has_patches(self) -> bool:
        return self.patch_parts.exists()

    def import_dataset(self, data_dir: str | Path, amibr_csv: str | Path | None = None,
                       progress: bool = False, specs: tuple[DatasetSpec, ...] = BENCHMARK,
                       replace: bool = False) -> ImportOutcome:
        """Validate and import the benchmark; a no-op (changed=False) when the same data is already stored.

        Adding new patches to the stored ones is always allowed, and writes only the new rows (one new
        part per dataset). Dropping a stored patch (its id is absent from the new import) or changing a
        stored patch's row needs ``replace=True`` (``mitoprobe data import --replace``): vectors, folds
        and results are keyed by patch id. Without it the import raises ``StoreError`` saying how many
        patches would be dropped/changed, and the store is left byte-identical. A damaged patches table
        is refused, ``replace`` or not (``integrity.preflight``: ``store repair`` fixes it). Other datasets
        in the store (users' cohorts) are kept."""
        self._check_root()
        stored = read_stored(self.patch_parts, {s.name for s in specs})
        scan, staging = self._staged_scan(
            stored, lambda sink: scan_benchmark(data_dir, amibr_csv, progress=progress, specs=specs, sink=sink))
        return self._commit(scan, {s.name for s in specs}, replace, stored, staging)

    def import_cohort(self, dataset: str, *, manifest: str | Path | None = None, folder: str | Path | None = None,
                      split: str = "test", progress: bool = False, replace: bool = False) -> ImportOutcome:
        """Validate and import a user's cohort as dataset ``dataset`` (``store.cohort``: a manifest CSV
        or a folder). Re-importing adds new files (unchanged ones are not decoded again) and writes only
        them; dropping or changing stored patches of the dataset needs ``replace=True``. Other datasets
        stay as they are."""
        self._check_root()
        stored = read_stored(self.patch_parts, {dataset})
        mine = None
        if stored.meta is not None:
            mine = stored.meta.select(["patch_id", "width", "height", "content_sha256"])
        scan, staging = self._staged_scan(stored, lambda sink: scan_cohort(
            dataset, manifest=manifest, folder=folder, split=split, stored=mine, progress=progress, sink=sink))
        if stored.others is not None:
            try:
                scan.notes.extend(_shared_pixel_notes(stored.others, scan.rows, dataset))
            except BaseException:
                staging.abort()
                scan.rows.discard()
                raise
        return self._commit(scan, {dataset}, replace, stored, staging)

    def _check_root(self) -> None:
        """Before an import reads anything: the root is a folder, and its patches table is not damaged."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not a store folder; pass --store with a folder path")
        integrity.preflight(self)

    def _staged_scan(self, stored, scan: Callable[[Staging], ImportScan]) -> tuple[ImportScan, Staging]:
        """Run ``scan`` with a sink staging the rows not stored yet; a failed scan leaves nothing behind."""
        staging = Staging(self.patch_parts, stored.ids())
        try:
            return scan(staging), staging
        except BaseException:
            staging.abort()
            raise

    def _commit(self, scan: ImportScan, datasets: set[str], replace: bool, stored, staging) -> ImportOutcome:
        """Write what the scan staged (``store.patch_import``) under the patches lock, taken only for
        the commit (a scan's bad input then leaves no trace, not even a lock file)."""
        try:
            counts = scan.counts()
            sweep_tmp(self.root)
            lock = patches_lock(self.root)
            with env_errors(self.patches_path):
                written = commit_import(self.patch_parts, stored, staging, scan.rows, datasets, replace, lock)
        except BaseException:
            staging.abort()
            raise
        finally:
            scan.rows.discard()
        if written is None:
            return ImportOutcome(False, counts, scan.notes, self.patches_path)
        migrations.upgrade(self.patch_parts)  # stamps the store (a migration, if any, was this commit)
        return ImportOutcome(True, counts, scan.notes, self.patches_path, written)

    def _require_patches(self) -> None:
        if not self.has_patches():
            raise StoreError(f"{self.patches_path} not found; run `mitoprobe data import` first")

    def patch_table(self, columns: list[str] | None = None, patch_ids=None, dataset: str | None = None) -> pa.Table:
        """Patch metadata as Arrow (every column but ``png`` by default; ask for ``png`` through
        :meth:`iter_images`, which never holds every PNG); only the rows of ``patch_ids`` when given (one
        patch's facts without a table of every patch); only ``dataset``'s rows when given, read from the parts
        the manifest says hold it (a cohort of 1,000 beside 200,000 others reads its own part)."""
        self._require_patches()
        names = self.patch_parts.column_names()
        if columns is None:
            columns = [c for c in names if c != "png"]
        if "png" in columns:
            raise StoreError("the png column is read a row group at a time: use Store.iter_images() or Store.images(ids)")
        missing = [c for c in columns if c not in names]
        if missing:
            raise StoreError(f"{self.patches_path} lacks column(s) {missing} (written by an older mitoprobe?); "
                             "re-run `mitoprobe data import`")
        if dataset is None:
            return self.patch_parts.read(columns, patch_ids=patch_ids)
        entries = [e for e in self.patch_parts.entries() if e.get("datasets") is None or dataset in e["datasets"]]
        t = self.patch_parts.read(list(dict.fromkeys([*columns, "dataset"])), entries=entries, patch_ids=patch_ids)
        return t.filter(pc.equal(t["dataset"], dataset)).select(columns)

    def patches(self, columns: list[str] | None = None, patch_ids=None, dataset: str | None = None) -> pd.DataFrame:
        """Patch metadata (every column but ``png``), one row per patch, in the table's order. Integer
        columns with nulls (coordinates, ``train_row``, an unlabelled cohort's ``y``) are pandas ``Int64``
        and votes ``boolean``, whatever the parts hold: the same frame from every part layout. ``patch_ids``:
        only those patches' rows (unknown ids are absent); ``dataset``: only that dataset's rows."""
        t = self.patch_table(columns, patch_ids, dataset)
        df = t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)
        for name in t.column_names:
            if pa.types.is_integer(t.schema.field(name).type) and not t[name].null_count:
                df[name] = df[name].astype("int64")
        return df

    def images(self, patch_ids: list[str]) -> dict[str, bytes]:
        """PNG bytes of the given patches (for a page of thumbnails or one fold's training set; ids not
        stored are left out). Reads only the row groups holding them. To visit every patch, use
        :meth:`iter_images`."""
        self._require_patches()
        return self.patch_parts.pngs(patch_ids)

    def iter_images(self, patch_ids: list[str] | None = None) -> Iterator[pa.Table]:
        """``(patch_id, png)`` tables, one row group (<= 1024 patches) at a time, of every patch or of
        ``patch_ids`` (in the table's order, not theirs): memory is one row group, whatever the store's size."""
        self._require_patches()
        return self.patch_parts.iter_images(patch_ids)

    # -- folds -----------------------------------------------------------------------------
    @property
    def folds_path(self) -> Path:
        return self.root / FOLDS_FILE

    def write_folds(self, df: pd.DataFrame) -> Path:
        integrity.preflight(self)  # folds of a damaged patches table are never saved
        table = schema.validate(pa.Table.from_pandas(df, preserve_index=False), schema.FOLDS, str(self.folds_path))
        write_parquet(table, self.folds_path)
        migrations.upgrade(self.patch_parts)
        return self.folds_path

    def read_folds(self) -> pd.DataFrame | None:
        """The saved folds; None when there are none (the classifiers then compute and save them:
        deterministic, so a deleted file comes back the same, which is said when results exist)."""
        if not self.folds_path.is_file():
            if self.results.parts("runs"):
                log.warning("%s is missing while results exist: the folds are recomputed (deterministic, "
                            "same seed) and saved again", self.folds_path)
            return None
        with read_guard(self.folds_path):
            return pq.read_table(self.folds_path).to_pandas()

    # -- change detection ------------------------------------------------------------------
    def fingerprint(self) -> Fingerprint:
        """A cheap, hashable summary that changes whenever a stored table does (a cache key).

        A few ``stat``/``scandir`` calls: no Parquet is opened and no ``.tmp-*`` file is swept
        (sweeping could race a job writing right now)."""
        results = tuple(_part_names(self.results.table_dir(t)) for t in RESULT_TABLES)
        sets = []
        if self.features.dir.is_dir():
            for d in sorted(p for p in self.features.dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                sets.append((d.name, (_stat_key(d / "COMPLETE"), _part_names(d))))
        return Fingerprint(self.patch_parts.stamp(), results, tuple(sets))

    # -- queries ---------------------------------------------------------------------------
    def table_files(self) -> list[Path]:
        """Every Parquet file a view reads: patches, folds, each set's parts, each result part."""
        files = [*self.patch_parts.part_paths(), *([self.folds_path] if self.folds_path.is_file() else [])]
        for s in self.features.sets():
            files += s.parts
        for table in RESULT_TABLES:
            files += self.results.parts(table)
        return files

    def find_damage(self) -> DamagedStoreError | None:
        """The first table file that cannot be read in full, as an error naming it (None if all read).
        Reads every byte: only for explaining a failure (``store check`` is the full check)."""
        try:
            for p in self.table_files():
                why = readable(p)  # a row group at a time: a patches part can be gigabytes
                if why is not None:
                    return damaged(p, why)
        except DamagedStoreError as exc:
            return exc
        return None

    def connect(self, read_only: bool = False):
        """An in-memory DuckDB connection with one view per stored table.

        Views: ``patches`` (no pixels), ``patch_images`` (patch_id, png), ``folds``,
        ``embedding_sets``, ``emb_<recipe_id>`` per set, ``runs``, ``predictions``.
        Every file's footer is read first (``DamagedStoreError`` naming a damaged one).
        ``read_only``: afterwards the connection cannot touch files outside the store, nor change
        that setting (DuckDB's ``allowed_directories`` + ``enable_external_access`` + ``lock_configuration``).
        """
        import duckdb

        for p in self.table_files():
            with read_guard(p):
                pq.read_metadata(p)
        root = self.root.resolve()
        con = duckdb.connect()
        q = lambda p: str(root / Path(p).relative_to(self.root)).replace("'", "''")  # noqa: E731
        if self.has_patches():
            files = "[" + ", ".join(f"'{q(p)}'" for p in self.patch_parts.part_paths()) + "]"
            cols = ", ".join(f'"{c}"' for c in self.patch_parts.column_names() if c != "png")
            con.execute(f"create view patches as select {cols} from read_parquet({files}, union_by_name=true)")
            con.execute(f"create view patch_images as select patch_id, png from read_parquet({files})")
        if self.folds_path.is_file():
            con.execute(f"create view folds as select * from read_parquet('{q(self.folds_path)}')")
        rows = []
        for s in self.features.sets():
            rows.append(dict(recipe_id=s.recipe_id, name=s.name, outputs=",".join(f"{k}:{v}" for k, v in s.outputs.items()),
                             complete=s.complete, parts=len(s.parts), path=str(s.path)))
            if s.parts:
                con.execute(f"create view emb_{s.recipe_id} as select * from read_parquet('{q(s.path)}/part-*.parquet')")
        sets_df = pd.DataFrame(rows, columns=["recipe_id", "name", "outputs", "complete", "parts", "path"])
        con.register("embedding_sets", sets_df)
        for table in RESULT_TABLES:
            if self.results.parts(table):
                glob = q(self.results.table_dir(table)) + "/part-*.parquet"
                try:
                    con.execute(f"create view {table} as select * from read_parquet('{glob}', union_by_name=true)")
                except duckdb.Error as exc:
                    con.close()
                    raise damaged(self.results.table_dir(table), exc, "has parts that cannot be read together") from exc
        if read_only:
            try:
                con.execute("set allowed_directories = ?", [[str(root) + os.sep]])
                con.execute("set enable_external_access = false")
                con.execute("set lock_configuration = true")
            except duckdb.Error:  # an older DuckDB without these settings: the statement check still holds
                log.debug("DuckDB cannot restrict file access here", exc_info=True)
        return con

    def views(self) -> list[str]:
        """Names of the DuckDB views ``connect`` creates for this store."""
        con = self.connect()
        try:
            return sorted(r[0] for r in con.execute("select table_name from information_schema.tables").fetchall())
        finally:
            con.close()

    def sql(self, query: str) -> pd.DataFrame:
        """Run one read-only query (``check_read_only``) over the views; a failure caused by a damaged
        file raises ``DamagedStoreError`` naming it, any other DuckDB error propagates."""
        import duckdb

        check_read_only(query)
        con = self.connect(read_only=True)
        try:
            return con.execute(query).df()
        except (duckdb.ParserException, duckdb.CatalogException, duckdb.BinderException):
            raise
        except duckdb.Error as exc:
            found = self.find_damage()
            if found is not None:
                raise found from exc
            raise
        finally:
            con.close()

    # -- summary ---------------------------------------------------------------------------
    def info(self) -> dict:
        """What is stored: patch counts, embedding sets and result tables with sizes."""
        def size(p: Path) -> int:
            if p.is_file():
                return p.stat().st_size
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0

        out: dict = {"root": str(self.root.resolve()), "patches": None, "embeddings": [], "results": []}
        if self.has_patches():
            df = self.patches(columns=["patch_id", "dataset", "split", "y"])
            out["patches"] = {"counts": summarize_counts(df), "parts": len(self.patch_parts.entries()),
                              "bytes": sum(size(p) for p in self.patch_parts.part_paths())}
        for s in self.features.sets():
            n = sum(part_rows(p) for p in s.parts)
            recorded = read_complete(s)
            if recorded is not None and recorded != n and self.features.lock(s.recipe_id).held_elsewhere() is None:
                raise DamagedStoreError(f"{s.path}: set {s.name} has {n} rows but its COMPLETE record says {recorded} "
                                        "(a part was added or lost after it finished); run `mitoprobe store check` "
                                        "to list the damage and `mitoprobe store repair` to fix it")
            out["embeddings"].append(dict(name=s.name, recipe_id=s.recipe_id, rows=n, complete=s.complete,
                                          outputs=s.outputs, bytes=size(s.path)))
        for table in RESULT_TABLES:
            parts = self.results.parts(table)
            if parts:
                n = sum(part_rows(p) for p in parts)
                out["results"].append(dict(table=table, rows=n, parts=len(parts),
                                           bytes=size(self.results.table_dir(table))))
        out["lance_bytes"] = size(self.root / "lance")
        return out


def _shared_pixel_notes(others: pa.Table, new: ScannedRows, dataset: str) -> list[str]:
    """A note when imported patches are byte-identical to stored patches of another dataset (``others``:
    their content_sha256, dataset, relpath): a cohort holding AMi-Br training patches would leak into a
    test set. A DuckDB join of the scan's file with ``others``."""
    others = others.select(["content_sha256", "dataset", "relpath"])
    others = others.append_column("at", pa.array(range(others.num_rows), pa.int64()))
    hit = "rows n join others o on n.content_sha256 = o.content_sha256"
    per = new.sql(f"select o.dataset, count(*) from {hit} group by 1 order by 1", {"others": others})
    if not per:
        return []
    (n,), = new.sql(f"select count(distinct n.relpath) from {hit}", {"others": others})
    ex = new.sql(f"select n.relpath, o.dataset, o.relpath from {hit} order by n.file_row_number, o.at limit 1",
                 {"others": others})[0]
    where = ", ".join(f"{k} in {d}" for d, k in per)
    return [f"{n} {dataset} patch(es) are byte-identical to stored patches ({where}); e.g. "
            f"{ex[0]} is {ex[1]} {ex[2]}. Scoring them as a test set "
            "measures memory, not generalisation: remove them from the cohort unless that is meant"]
