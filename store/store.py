"""The ``Store``: one folder holding patches, embedding sets and results, queried with DuckDB."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import paths, schema
from .atomic import sweep_tmp, write_parquet
from .dataset import ImportScan, scan_benchmark, summarize_counts
from .datasets import BENCHMARK, DatasetSpec
from .errors import StoreError
from .features import FeatureStore
from .results import RESULT_TABLES, ResultTables

log = logging.getLogger(__name__)

PATCHES_FILE = "patches.parquet"
FOLDS_FILE = "folds.parquet"


class Fingerprint(NamedTuple):
    """What a store holds, cheaply: file names, sizes and mtimes, never Parquet contents.

    Three parts kept apart so a cache keyed on one is not evicted by the others: an embedding
    job adding parts changes ``sets`` only, appending a run changes ``results`` only.
    """

    patches: tuple  # patches.parquet: (name, size, mtime_ns, inode), or (name, None) when absent
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


@dataclass
class ImportOutcome:
    changed: bool
    counts: pd.DataFrame
    notes: list[str]
    path: Path


class Store:
    """Entry point of the library: ``Store(path)`` (default ``$MITOPROBE_STORE`` or ./mitoprobe-store)."""

    def __init__(self, root: str | Path | None = None):
        self.root = paths.store_root(root)
        self.features = FeatureStore(self.root)
        self.results = ResultTables(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- patches ---------------------------------------------------------------------------
    @property
    def patches_path(self) -> Path:
        return self.root / PATCHES_FILE

    def has_patches(self) -> bool:
        return self.patches_path.is_file()

    def import_dataset(self, data_dir: str | Path, amibr_csv: str | Path | None = None,
                       progress: bool = False, specs: tuple[DatasetSpec, ...] = BENCHMARK) -> ImportOutcome:
        """Validate and import; a no-op (changed=False) when the same data is already stored."""
        scan: ImportScan = scan_benchmark(data_dir, amibr_csv, progress=progress, specs=specs)
        new = schema.validate(pa.Table.from_pandas(scan.patches, preserve_index=False), schema.PATCHES,
                              str(self.patches_path))
        counts = summarize_counts(scan.patches)
        sweep_tmp(self.root)
        if self.has_patches():
            old = pq.read_table(self.patches_path)
            if old.schema.equals(new.schema) and old.equals(new):
                return ImportOutcome(False, counts, scan.notes, self.patches_path)
        self.root.mkdir(parents=True, exist_ok=True)
        write_parquet(new, self.patches_path, row_group_size=1024)
        return ImportOutcome(True, counts, scan.notes, self.patches_path)

    def patches(self, columns: list[str] | None = None, with_images: bool = False) -> pd.DataFrame:
        """Patch metadata (the ``png`` column only when ``with_images``)."""
        if not self.has_patches():
            raise StoreError(f"{self.patches_path} not found; run `mitoprobe data import` first")
        if columns is None:
            schema = pq.read_schema(self.patches_path)
            columns = [c for c in schema.names if with_images or c != "png"]
        return pq.read_table(self.patches_path, columns=columns).to_pandas()

    def images(self, patch_ids: list[str] | None = None) -> dict[str, bytes]:
        """PNG bytes by patch id (all patches when ``patch_ids`` is None)."""
        t = pq.read_table(self.patches_path, columns=["patch_id", "png"])
        if patch_ids is not None:
            import pyarrow.compute as pc

            t = t.filter(pc.is_in(t["patch_id"], pa.array(list(patch_ids), pa.string())))
        return dict(zip(t["patch_id"].to_pylist(), t["png"].to_pylist()))

    # -- folds -----------------------------------------------------------------------------
    @property
    def folds_path(self) -> Path:
        return self.root / FOLDS_FILE

    def write_folds(self, df: pd.DataFrame) -> Path:
        table = schema.validate(pa.Table.from_pandas(df, preserve_index=False), schema.FOLDS, str(self.folds_path))
        return write_parquet(table, self.folds_path)

    def read_folds(self) -> pd.DataFrame | None:
        return pq.read_table(self.folds_path).to_pandas() if self.folds_path.is_file() else None

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
        return Fingerprint(_stat_key(self.patches_path), results, tuple(sets))

    # -- queries ---------------------------------------------------------------------------
    def connect(self):
        """An in-memory DuckDB connection with one view per stored table.

        Views: ``patches`` (no pixels), ``patch_images`` (patch_id, png), ``folds``,
        ``embedding_sets``, ``emb_<recipe_id>`` per set, ``runs``, ``predictions``.
        """
        import duckdb

        con = duckdb.connect()
        q = lambda p: str(p).replace("'", "''")  # noqa: E731
        if self.has_patches():
            con.execute(f"create view patches as select * exclude (png) from read_parquet('{q(self.patches_path)}')")
            con.execute(f"create view patch_images as select patch_id, png from read_parquet('{q(self.patches_path)}')")
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
                con.execute(f"create view {table} as select * from read_parquet('{glob}', union_by_name=true)")
        return con

    def views(self) -> list[str]:
        """Names of the DuckDB views ``connect`` creates for this store."""
        con = self.connect()
        try:
            return sorted(r[0] for r in con.execute("select table_name from information_schema.tables").fetchall())
        finally:
            con.close()

    def sql(self, query: str) -> pd.DataFrame:
        con = self.connect()
        try:
            return con.execute(query).df()
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
            out["patches"] = {"counts": summarize_counts(df), "bytes": size(self.patches_path)}
        for s in self.features.sets():
            n = sum(pq.ParquetFile(p).metadata.num_rows for p in s.parts)
            out["embeddings"].append(dict(name=s.name, recipe_id=s.recipe_id, rows=n, complete=s.complete,
                                          outputs=s.outputs, bytes=size(s.path)))
        for table in RESULT_TABLES:
            parts = self.results.parts(table)
            if parts:
                n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
                out["results"].append(dict(table=table, rows=n, parts=len(parts),
                                           bytes=size(self.results.table_dir(table))))
        out["lance_bytes"] = size(self.root / "lance")
        return out
