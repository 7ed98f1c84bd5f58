"""Read the PNG bytes of a few patches without reading every patch's.

``patches.parquet`` keeps each patch's PNG in its ``png`` column (~200 MB for the benchmark), in row
groups of ~1024 patches. Reading the whole column to show a dozen thumbnails costs most of a second
and all that memory; Parquet's smallest independently readable unit is a row group's column chunk
(no page index is written), so :func:`read_pngs` reads only the row groups that hold the wanted
patches, and keeps only their rows.

Where each patch lies is read from the same open file (its small ``patch_id`` column, a few ms), so
the answer is always consistent with the file being read, even when an import replaces it meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import read_guard


def read_pngs(path: str | Path, patch_ids: Iterable[str]) -> dict[str, bytes]:
    """PNG bytes by patch id for ``patch_ids`` (ids not stored are left out), reading only the row
    groups of ``path`` (a ``patches.parquet``) that hold them.

    Raises ``DamagedStoreError`` naming the file when it cannot be read."""
    wanted = list(dict.fromkeys(str(p) for p in patch_ids))
    if not wanted:
        return {}
    out: dict[str, bytes] = {}
    with read_guard(path):
        f = pq.ParquetFile(path)
        ids = f.read(columns=["patch_id"])["patch_id"]
        hit = pc.is_in(ids, value_set=pa.array(wanted, pa.string())).to_numpy(zero_copy_only=False)
        ends = np.cumsum([f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)])
        groups = np.unique(np.searchsorted(ends, np.flatnonzero(hit), side="right"))
        for g in groups.tolist():
            t = f.read_row_group(g, columns=["patch_id", "png"])
            t = t.filter(pc.is_in(t["patch_id"], value_set=pa.array(wanted, pa.string())))
            out.update(zip(t["patch_id"].to_pylist(), t["png"].to_pylist()))
    return out
