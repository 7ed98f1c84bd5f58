"""Patch-id keys in Arrow, with no Python string per patch: at a cohort's 200,000 patches a pandas Index
or a hash aggregation made tens of MiB of objects and tables that stayed resident after use
(docs/benchmarks.md, "Cohort scale, round 4").

``as_arrow_ids`` (any list of ids as one Arrow array), ``positions`` (where ids are in another list),
``distinct_count`` (how many distinct rows of key columns, by sorting).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .memory import releasing


def as_arrow_ids(ids) -> pa.Array:
    """``ids`` as one ``large_string`` Arrow array: zero-copy from Arrow-backed pandas strings and Arrow
    arrays, converted from Python strings otherwise (a list, an object array)."""
    if not isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if isinstance(ids, (pd.Series, pd.Index, pd.api.extensions.ExtensionArray)):
            ids = pa.array(ids)
        else:
            ids = pa.array(np.asarray(ids, dtype=object), pa.string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    return ids.cast(pa.large_string())


@releasing
def positions(ids, among) -> np.ndarray:
    """The position in ``among`` (ids, each once) of each of ``ids``; -1 where absent."""
    at = pc.index_in(as_arrow_ids(ids), value_set=as_arrow_ids(among))
    return pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int64)


@releasing
def distinct_count(t: pa.Table, columns) -> int:
    """How many distinct rows ``t``'s ``columns`` hold, by sorting (adjacent equal rows are copies): a hash
    aggregation (``group_by``) left ~50 MiB more resident at 200,000 keys."""
    columns = list(columns)
    if t.num_rows < 2:
        return t.num_rows
    s = t.select(columns).take(pc.sort_indices(t, sort_keys=[(c, "ascending") for c in columns]))
    same = None
    for c in columns:
        eq = pc.equal(s[c][1:], s[c][:-1])
        same = eq if same is None else pc.and_(same, eq)
    return t.num_rows - (pc.sum(same).as_py() or 0)
