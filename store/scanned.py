"""A scan's rows, spooled to a Parquet file as they are checked: an import's memory does not grow with the cohort.

Why a file: a scan used to hold every row's metadata as Python dicts and then one pandas frame (~1 kB a
patch, 3.7 kB at 197,190 patches), and the commit compared frames and dicts of every row. Here a scan keeps
``BATCH`` rows in memory; what needs every row (duplicate groups, counts, notes, the commit's comparison
with the stored rows) is a DuckDB query over the file, or a pass over it a batch at a time.

The file lives in a private temporary folder (never in the store: a failed import leaves the store as it
was), removed by :meth:`ScannedRows.discard` or when the object is collected.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import schema

BATCH = 4096  # rows held before they are written (and read back) as one row group: ~1 MB of metadata


class ScannedRows:
    """The rows of one scan (``schema.PATCH_METADATA``, in scan order): :meth:`append` while scanning,
    :meth:`seal`, then read them back in batches or query them (the view ``rows``, with ``file_row_number``)."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="mitoprobe-scan-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self.path = self._dir / "rows.parquet"
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, schema.PATCH_METADATA,
                                                                 compression="zstd")
        self._buf: list[dict] = []
        self.num_rows = 0

    # -- writing ---------------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """One row (a ``png`` key is left out: the rows never hold pixels)."""
        self._buf.append({k: v for k, v in row.items() if k != "png"})
        if len(self._buf) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._writer.write_table(pa.Table.from_pylist(self._buf, schema=schema.PATCH_METADATA))
            self.num_rows += len(self._buf)
            self._buf = []

    def seal(self) -> ScannedRows:
        """Write what is buffered and close the file; the rows are then read-only."""
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        return self

    def flag_duplicates(self) -> int:
        """Set ``duplicate_group`` (the first 16 hex digits of ``content_sha256``) on every row whose bytes
        another row shares; the number of such rows. The duplicated digests are found by DuckDB over the
        file; the file is rewritten a batch at a time only when there are any."""
        dups = pa.array([r[0] for r in self.sql("select content_sha256 from rows group by 1 having count(*) > 1")],
                        pa.large_string())
        if not len(dups):
            return 0
        out, flagged = self._dir / "rows-flagged.parquet", 0
        at = schema.PATCH_METADATA.get_field_index("duplicate_group")
        with pq.ParquetWriter(out, schema.PATCH_METADATA, compression="zstd") as w:
            for t in self.batches():
                hit = pc.is_in(t["content_sha256"], value_set=dups)
                flagged += pc.sum(hit.cast(pa.int64())).as_py() or 0
                group = pc.if_else(hit, pc.utf8_slice_codeunits(t["content_sha256"], 0, 16),
                                   pa.scalar(None, pa.large_string()))
                w.write_table(t.set_column(at, "duplicate_group", group))
        os.replace(out, self.path)
        return flagged

    def discard(self) -> None:
        """Remove the file (the rows are gone)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._cleanup()

    # -- reading ---------------------------------------------------------------------------
    def batches(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The rows ``BATCH`` at a time, in scan order."""
        f = pq.ParquetFile(self.path)
        for b in f.iter_batches(batch_size=BATCH, columns=columns):
            yield pa.Table.from_batches([b])

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Every row at once: for small scans and for what needs the rows by id (``--replace``)."""
        return pq.read_table(self.path, columns=columns)

    def sql(self, query: str, tables: dict[str, pa.Table] | None = None) -> list[tuple]:
        """Run ``query`` over the view ``rows`` (every column and ``file_row_number``, the scan order) and
        ``tables`` (Arrow tables, by name)."""
        import duckdb

        con = duckdb.connect()
        try:
            con.execute("set threads = 1")
            path = str(self.path).replace("'", "''")
            con.execute(f"create view rows as select * from read_parquet('{path}', file_row_number = true)")
            for name, t in (tables or {}).items():
                con.register(name, t)
            return con.execute(query).fetchall()
        finally:
            con.close()

    def datasets(self) -> list[str]:
        """The datasets the rows belong to, in order of first appearance."""
        return [r[0] for r in self.sql("select dataset from rows group by 1 order by min(file_row_number)")]

    def counts(self) -> pd.DataFrame:
        """Patches and atypical / normal counts per dataset/split, in order of first appearance (the
        columns of ``store.dataset.summarize_counts`` before its unlabelled column)."""
        rows = self.sql("select dataset, split, count(*), count(*) filter (where y = 1), count(*) filter (where y = 0) "
                        "from rows group by dataset, split order by min(file_row_number)")
        out = pd.DataFrame(rows, columns=["dataset", "split", "patches", "atypical", "normal"])
        return out.astype({c: "int64" for c in ("patches", "atypical", "normal")})

