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
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import migrations, schema
from .atomic import COMPRESSION, atomic_write, read_guard, sweep_tmp
from .errors import StoreError
from .lock import SetLock, family_lock
from .memory import releasing
from .patch_parts import PatchParts

RESULT_TABLES = ("runs", "predictions")
# rows of a result part per row group when written, and per batch when read with a filter or checked: memory
# holds one batch, not a part (a probe on a cohort writes ~400,000 prediction rows in one part)
RESULT_BATCH = 65_536
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

    @releasing
    def append(self, table: str, rows: pd.DataFrame | pa.Table | list) -> Path | None:
        """Append rows as a new part; returns the part path (None when there are no rows).

        ``rows``: a frame or Arrow table, or a list of them written in order as row groups of the one part,
        never concatenated (a probe on a cohort appends ~400,000 prediction rows in a dozen frames).
        Each is validated against ``store.schema`` (RUNS / PREDICTIONS): schema columns get the schema's
        types and absent ones are written as nulls, so every new part has the same columns and types and
        ``union_by_name`` readers never see a type clash. Extra columns (an ad-hoc metric) are kept after
        them; parts written before the schema still read. A frame that fails leaves no part behind."""
        if table not in SCHEMAS:
            raise StoreError(f"unknown result table {table!r}; choose from {list(RESULT_TABLES)}")
        frames = rows if isinstance(rows, list) else [rows]
        if not any(len(f) for f in frames):
            return None
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
        part = atomic_write(self.table_dir(table) / name, lambda tmp: self._write(table, frames, tmp))
        sweep_tmp(self.table_dir(table))
        migrations.upgrade(PatchParts(self.dir.parent))
        return part

    def _write(self, table: str, frames: list, tmp: Path) -> None:
        """``frames`` validated one at a time into one Parquet file, ``RESULT_BATCH`` rows per row group."""
        where = str(self.table_dir(table))
        writer = None
        try:
            for df in frames:
                t = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
                if t.num_rows == 0:
                    continue
                missing = [k for k in KEYS[table] if k not in t.column_names]
                if missing:
                    raise StoreError(f"{where}: refusing to append rows without key column(s) {missing}")
                t = schema.validate(t, SCHEMAS[table], where, fill_missing=True, keep_extra=True)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, t.schema, compression=COMPRESSION)
                elif not t.schema.equals(writer.schema, check_metadata=False):
                    raise StoreError(f"{where}: the frames of one append disagree on their columns "
                                     f"({writer.schema.names} then {t.schema.names})")
                writer.write_table(t, row_group_size=RESULT_BATCH)
        finally:
            if writer is not None:
                writer.close()

    def parts(self, table: str) -> list[Path]:
        d = self.table_dir(table)
        return sorted(d.glob("part-*.parquet")) if d.is_dir() else []

    @releasing
    def read(self, table: str, columns: list[str] | None = None,
             where: Callable[[pa.Table], pa.Array] | None = None,
             only: dict[str, list] | None = None) -> pd.DataFrame:
        """The table's rows (``columns`` only, when given); ``where``: a function of an Arrow table of one
        part's rows (its ``columns``; a column the part lacks is absent) giving the rows to keep, applied
        ``RESULT_BATCH`` rows at a time, so memory holds one batch and the kept rows, not the whole table (a
        cohort's predictions). ``only`` (column -> values; with ``where``, which must keep no row outside them):
        row groups whose statistics rule out every value are not read (a family's rows among many)."""
        if not self.parts(table):
            return pd.DataFrame(columns=columns or [])
        tables = list(self.batches(table, columns, where, only))
        with read_guard(self.table_dir(table), "has parts whose columns disagree in type"):
            t = pa.concat_tables(tables, promote_options="permissive")
        df = t.to_pandas()
        if columns:
            df = df.reindex(columns=columns)  # a column no part has: all missing
        return df

    def batches(self, table: str, columns: list[str] | None = None,
                where: Callable[[pa.Table], pa.Array] | None = None,
                only: dict[str, list] | None = None) -> Iterator[pa.Table]:
        """The table's rows as Arrow tables, a part at a time, or (with ``where`` and ``only``, as in :meth:`read`)
        a batch of ``RESULT_BATCH`` rows at a time filtered; a column a part lacks is absent from its tables. For a
        reader that reduces as it goes (``report.out_of_fold_scores``): memory holds one batch."""
        for p in self.parts(table):
            with read_guard(p):
                have = pq.read_schema(p).names
                cols = None if columns is None else [c for c in columns if c in have]
                if where is None:
                    yield pq.read_table(p, columns=cols)
                    continue
                f = pq.ParquetFile(p, pre_buffer=False)
                read = False
                for b in f.iter_batches(batch_size=RESULT_BATCH, columns=cols, row_groups=_row_groups(f, only)):
                    b = pa.Table.from_batches([b])
                    read = True
                    yield b.filter(where(b))
                if not read:  # no batch: the part's (empty) columns all the same
                    yield f.schema_arrow.empty_table().select(cols or f.schema_arrow.names)


def _row_groups(f: pq.ParquetFile, only: dict[str, list] | None) -> list[int]:
    """The row groups of ``f`` that may hold a row whose ``only`` columns are among their values: a row group is
    left out when a column's min/max statistics exclude every value (one without statistics, with nulls, or
    that the part lacks, leaves nothing out)."""
    meta = f.metadata
    groups = list(range(meta.num_row_groups))
    if not only:
        return groups
    at = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    rules = [(at[c], list(v)) for c, v in only.items() if c in at]

    def possible(g: int) -> bool:
        for i, values in rules:
            st = meta.row_group(g).column(i).statistics
            if st is None or not st.has_min_max or not st.has_null_count or st.null_count:
                continue
            if not any(st.min <= v <= st.max for v in values):
                return False
        return True

    return [g for g in groups if possible(g)]

