"""Append-only result tables (``runs``, ``predictions``, ...) as Parquet parts.

Each append writes one new part file atomically under ``<store>/results/<table>/``; nothing is
ever rewritten (only ``store repair`` rewrites a part that holds rows stored twice), so a crash
mid-append loses only that append and earlier results stay intact. Writers of one family hold its
lock (:meth:`ResultTables.lock`) from "is it stored yet?" to the append.
Parts written before a column was added lack it: readers combine parts by column name (union).
A part that cannot be read raises :class:`DamagedStoreError` naming it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import migrations, schema
from .atomic import read_guard, sweep_tmp, write_parquet
from .errors import StoreError
from .lock import SetLock, family_lock
from .patch_parts import PatchParts

RESULT_TABLES = ("runs", "predictions")
SCHEMAS = {"runs": schema.RUNS, "predictions": schema.PREDICTIONS}
KEYS = {"runs": ("run_id",), "predictions": ("run_id", "patch_id")}  # a row without these means nothing
# One row per value of these (a row stored twice is two writers' work, ``store check`` reports it); a
# predictions row without ``split`` was written before it existed and means "test".
UNIQUE_KEYS = {"runs": ("run_id", "test_set"), "predictions": ("run_id", "test_set", "split", "patch_id")}


class ResultTables:
    def __init__(self, root: Path):
        self.dir = Path(root) / "results"

    def lock(self, family_id: str, label: str | None = None) -> SetLock:
        """The write lock of one family's rows (not taken yet): held around "stored yet? compute,
        append" so two jobs never append the same family twice (``store/lock.py``)."""
        return family_lock(self.dir.parent, family_id, label)

    def table_dir(self, table: str) -> Path:
        return self.dir / table

    def append(self, table: str, df: pd.DataFrame | pa.Table) -> Path | None:
        """Append rows as a new part; returns the part path (None for an empty frame).

        The part is validated against ``store.schema`` (RUNS / PREDICTIONS): schema columns get
        the schema's types and absent ones are written as nulls, so every new part has the same
        columns and types and ``union_by_name`` readers never see a type clash. Extra columns (an
        ad-hoc metric) are kept after them; parts written before the schema still read."""
        if table not in SCHEMAS:
            raise StoreError(f"unknown result table {table!r}; choose from {list(RESULT_TABLES)}")
        t = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
        if t.num_rows == 0:
            return None
        where = str(self.table_dir(table))
        missing = [k for k in KEYS[table] if k not in t.column_names]
        if missing:
            raise StoreError(f"{where}: refusing to append rows without key column(s) {missing}")
        t = schema.validate(t, SCHEMAS[table], where, fill_missing=True, keep_extra=True)
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        sweep_tmp(self.table_dir(table))
        part = write_parquet(t, self.table_dir(table) / name)
        migrations.upgrade(PatchParts(self.dir.parent))
        return part

    def parts(self, table: str) -> list[Path]:
        d = self.table_dir(table)
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    def read(self, table: str, columns: list[str] | None = None,
             where: Callable[[pa.Table], pa.Array] | None = None) -> pd.DataFrame:
        """The table's rows (``columns`` only, when given); ``where``: a function of one part's Arrow table
        (its ``columns``; a column the part lacks is absent) giving the rows to keep, applied part by part,
        so memory holds one part's columns and the kept rows, not the whole table (a cohort's predictions)."""
        parts = self.parts(table)
        if not parts:
            return pd.DataFrame(columns=columns or [])
        tables = []
        for p in parts:
            with read_guard(p):
                have = pq.read_schema(p).names
                t = pq.read_table(p, columns=None if columns is None else [c for c in columns if c in have])
            tables.append(t if where is None else t.filter(where(t)))
        with read_guard(self.table_dir(table), "has parts whose columns disagree in type"):
            t = pa.concat_tables(tables, promote_options="permissive")
        df = t.to_pandas()
        if columns:
            df = df.reindex(columns=columns)  # a column no part has: all missing
        return df
