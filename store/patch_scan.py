"""The patches table under ``store check``, ``store repair`` and the writers' preflight.

What can be wrong, each reported as a :class:`~.findings.Problem` naming the file, each with a repair
that needs no guess:

* ``MANIFEST.json`` cannot be read: quarantined, and a manifest listing every readable part file is
  written (the first copy of each patch id kept, as below);
* a listed part is missing, cannot be read, or lacks the patches schema: it leaves the manifest
  (quarantined when present) and its datasets are imported again;
* a readable, valid part whose rows (or rows per dataset) the manifest records wrongly: its entry is
  rewritten from the part, which stays (vectors, folds and results refer to its patches);
* patch ids stored twice: a part listed twice is listed once; of two parts holding the same ids (a copied
  part, the same data imported twice) the first copy, in manifest order, stays: a later part holding only
  copies is quarantined, one holding new ids too is rewritten without the copies (its original
  quarantined), so no patch stored once is lost;
* a part no manifest lists (an import killed before its commit): a warning; quarantined.

Two depths, one code: ``full`` (``store check``) reads every byte, a row group at a time; the writers'
preflight reads each part's footer and the small columns it needs (``patch_id``, ``dataset``, and the
folds' columns when folds are saved), never a pixel.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import schema
from .atomic import READ_ERRORS
from .errors import DamagedStoreError
from .findings import REPAIR, Problem
from .keys import distinct_count
from .memory import releasing
from .patch_parts import PartWriter, PatchParts, copy_rows, dataset_counts

ID_COLUMNS = ("patch_id", "dataset")  # what the preflight reads of every part (the count checks need dataset)
MANIFEST_NAME = "patches/MANIFEST.json"


@dataclass
class Copies:
    """A part holding patch ids stored before it (in manifest order, or earlier in itself)."""

    path: Path
    keep: np.ndarray  # rows holding the first copy of their id
    first: Path  # the part holding the first copy of its first duplicate


@dataclass
class PatchScan:
    manifest_error: str | None = None  # why MANIFEST.json cannot be read
    bad: list[tuple[Path, str]] = field(default_factory=list)  # missing, unreadable, wrong schema
    miscounted: list[tuple[Path, str]] = field(default_factory=list)  # valid parts the manifest miscounts
    listed_twice: dict[Path, int] = field(default_factory=dict)  # part -> times listed
    copies: list[Copies] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)  # part files no manifest lists
    rows: dict[Path, int] = field(default_factory=dict)  # rows of each readable part
    kept: pa.Table | None = None  # columns read of the rows a repair leaves (None: no table, or unknown), in Arrow

    def frame(self, where: Callable[[pa.Table], pa.Array] | None = None) -> pd.DataFrame | None:
        """``kept`` as pandas (only the rows ``where`` selects: the preflight's folds check wants the
        AMi-Br train rows, not a cohort's 200,000 rows as Python objects); None when there is no table."""
        if self.kept is None:
            return None
        return (self.kept if where is None else self.kept.filter(where(self.kept))).to_pandas()

    @functools.cached_property
    def ids(self) -> set | None:
        """The kept patch ids as a set (made on first use: only ``store check`` asks)."""
        return None if self.kept is None else set(self.kept["patch_id"].to_pylist())


def read_part(path: Path, columns, full: bool) -> tuple[pa.Table | None, str | None]:
    """(the part's ``columns``, None) when it reads and has the patches schema, else (None, why).
    ``full``: every row group is read whole, pixels too (that is the check), one at a time."""
    try:
        f = pq.ParquetFile(path)
        bad = schema.type_problems(f.schema_arrow, schema.PATCHES, missing_ok=schema.ADDED_PATCH_COLUMNS)
        if bad:
            return None, "does not match the patches schema: " + "; ".join(bad)
        cols = [c for c in columns if c in f.schema_arrow.names]
        if not full:
            return f.read(columns=cols, use_threads=False), None
        groups = [f.read_row_group(g).select(cols) for g in range(f.metadata.num_row_groups)]
    except READ_ERRORS as exc:
        return None, " ".join(str(exc).split()) or type(exc).__name__
    return (pa.concat_tables(groups) if groups else f.schema_arrow.empty_table().select(cols)), None


def _miscount(entry: dict, t: pa.Table) -> str | None:
    rows, datasets = entry.get("rows"), entry.get("datasets")
    if rows is not None and t.num_rows != rows:
        return f"holds {t.num_rows} rows, {MANIFEST_NAME} records {rows}"
    got = dataset_counts(t["dataset"]) if datasets is not None else None
    if got is not None and got != datasets:
        return f"holds {got} rows per dataset, {MANIFEST_NAME} records {datasets}"
    return None


def first_copies(read: list[tuple[Path, pa.Table]]) -> list[Copies]:
    """The parts of ``read`` (in table order) holding a patch id stored before them."""
    if not read:
        return []
    chunks = [c for _, t in read for c in t["patch_id"].cast(pa.large_string()).chunks]  # string or large_string
    if distinct_count(pa.table({"patch_id": pa.chunked_array(chunks, pa.large_string())}), ["patch_id"]) == \
            sum(t.num_rows for _, t in read):
        return []  # no id twice (the usual case), found by sorting: the hashing below costs ~3x the memory
    ids = pa.chunked_array(chunks, pa.large_string()).combine_chunks()
    codes = ids.dictionary_encode().indices.to_numpy(zero_copy_only=False)  # ids numbered by first appearance
    first_at = np.unique(codes, return_index=True)[1]  # row of each id's first copy
    dup = np.arange(len(ids)) != first_at[codes]
    ends = np.cumsum([t.num_rows for _, t in read])
    out, start = [], 0
    for (path, _), end in zip(read, ends):
        mine = dup[start:end]
        if mine.any():
            owner = int(np.searchsorted(ends, first_at[codes[start + int(np.argmax(mine))]], side="right"))
            out.append(Copies(path, ~mine, read[owner][0]))
        start = end
    return out


def _once(parts: PatchParts, entries: list[dict]) -> list[tuple[Path, dict]]:
    """(path, entry) of each listed part, at its first listing."""
    first: dict[Path, dict] = {}
    for e in entries:
        first.setdefault(parts.path_of(e), e)
    return list(first.items())


@releasing
def scan(parts: PatchParts, columns=ID_COLUMNS, full: bool = False) -> PatchScan:
    """What is wrong with the patches table; ``meta``: ``columns`` of the rows a repair keeps."""
    s = PatchScan()
    if not parts.exists():
        return s
    try:
        entries = parts.entries()
    except DamagedStoreError as exc:
        s.manifest_error = getattr(exc, "reason", str(exc))
        return s
    s.unlisted = parts.unlisted()
    times = Counter(parts.path_of(e) for e in entries)
    cols = list(dict.fromkeys([*ID_COLUMNS, *columns]))
    read: list[tuple[Path, pa.Table]] = []
    for path, e in _once(parts, entries):
        t, err = read_part(path, cols, full) if path.is_file() else (None, f"is listed in {MANIFEST_NAME} but missing")
        if err:
            s.bad.append((path, err))
            continue
        if why := _miscount(e, t):
            s.miscounted.append((path, why))
        s.rows[path] = t.num_rows
        read.append((path, t))
    s.listed_twice = {p: n for p, n in times.items() if n > 1 and p in s.rows}
    s.copies = first_copies(read)
    keep = {c.path: c.keep for c in s.copies}
    kept = [t.filter(pa.array(keep[p])) if p in keep else t for p, t in read]
    s.kept = (pa.concat_tables(kept, promote_options="permissive") if kept else
              pa.schema([schema.PATCHES.field(c) for c in cols]).empty_table())
    return s


def problems(s: PatchScan, parts: PatchParts) -> list[Problem]:
    P, out = Problem, []
    if s.manifest_error is not None:
        out.append(P(parts.manifest_path, f"cannot be read ({s.manifest_error})", f"{REPAIR} (quarantines it and "
                     "writes one listing the readable part files)", "unreadable"))
    fix = f"{REPAIR} (quarantines it and drops it from the manifest), then `mitoprobe data import` the same data"
    for path, why in s.bad:
        out.append(P(path, why if why.startswith(("is listed", "does not")) else f"cannot be read ({why})", fix,
                     "unreadable"))
    for path, why in s.miscounted:
        out.append(P(path, why, f"{REPAIR} (rewrites its manifest entry from the part, which stays)", "manifest-count"))
    for path, n in s.listed_twice.items():
        out.append(P(path, f"is listed {n} times in {MANIFEST_NAME}: its {s.rows[path]} patches are read {n} times",
                     f"{REPAIR} (lists it once)", "duplicate-patches"))
    for c in s.copies:
        n, kept = int((~c.keep).sum()), int(c.keep.sum())
        where = "earlier in this part" if c.first == c.path else f"in {c.first.name}"
        how = f"rewrites this part with its {kept} other rows" if kept else "quarantines this part"
        out.append(P(c.path, f"{n} of its {len(c.keep)} patch ids are already stored {where} (the same patches "
                     "imported twice, or a copied part)", f"{REPAIR} (keeps the first copy: {how})", "duplicate-patches"))
    for path in s.unlisted:
        out.append(P(path, "a patches part no manifest lists (an import stopped before its commit)",
                     f"{REPAIR} (quarantines it; nothing stored refers to it)", "unlisted-part", "warning"))
    return out


# -- repair -------------------------------------------------------------------------------------
def _rewrite(r, parts: PatchParts, c: Copies) -> Callable[[], dict]:
    """Plan the rewrite of ``c.path`` without its copies; returns what gives the new part's entry."""
    made: dict = {}

    def do(a) -> None:
        pos = [0]

        def first_copies_only(t: pa.Table) -> pa.Table:
            mask = c.keep[pos[0]:pos[0] + t.num_rows]
            pos[0] += t.num_rows
            return t.filter(pa.array(mask))

        w = PartWriter(parts, "")
        try:
            copy_rows([c.path], w, first_copies_only)
            w.finish()
        except BaseException:
            w.abort()
            raise
        a.target = parts.dir / w.name
        made["entry"] = parts.entry_of(a.target)

    r.act(c.path, "rewrite part", f"keeps its {int(c.keep.sum())} patches stored once in a new part, without its "
          f"{int((~c.keep).sum())} copies", do)
    return lambda: made["entry"]


def _keep(r, parts: PatchParts, listed: list[tuple[Path, dict | None]], copies: list[Copies],
          fixed: dict[Path, str]) -> tuple[list, list[str]]:
    """The manifest entries (or callables giving them) a repair keeps of ``listed`` (path, entry: None to
    read it from the part), quarantining copies and rewriting mixed parts; and what changed, in words."""
    by_path = {c.path: c for c in copies}
    final, changes = [], []
    for path, entry in listed:
        c = by_path.get(path)
        if c is not None:
            if c.keep.any():
                final.append(_rewrite(r, parts, c))
            where = "earlier in it" if c.first == path else f"in {c.first.name}, kept there"
            r.quarantine(path, f"{int((~c.keep).sum())} of its patch ids are stored {where}"
                         + ("; its other rows were rewritten" if c.keep.any() else ""))
            changes.append(f"{path.name} without its copies")
        elif entry is None or path in fixed:
            final.append(lambda p=path: parts.entry_of(p))
            if path in fixed:
                changes.append(f"the entry of {path.name} read from the part ({fixed[path]})")
        else:
            final.append(entry)
    return final, changes


def repair(r, s: PatchScan, parts: PatchParts) -> None:
    """The patches table's repair actions (``r``: ``integrity._Repair``; see the module docstring)."""
    if s.manifest_error is not None:
        _rebuild(r, s, parts)
        return
    bad = dict(s.bad)
    unique = _once(parts, parts.entries()) if parts.exists() else []
    for path, why in s.bad:
        if path.exists():
            r.quarantine(path, why)
    final, changes = _keep(r, parts, [(p, e) for p, e in unique if p not in bad], s.copies, dict(s.miscounted))
    changes += [f"{p.name} listed once (it was listed {n} times)" for p, n in s.listed_twice.items()]
    if bad:
        lost = sorted({d for p, e in unique if p in bad for d in (e.get("datasets") or {})})
        changes.append(f"without the {len(bad)} bad part(s): `mitoprobe data import` the data of "
                       f"{', '.join(lost) or 'their datasets'} again")
    # a format-1 store's one file, when bad, just goes: no manifest to write
    if changes and (parts.manifest_path.is_file() or s.copies):
        if parts.manifest_path.is_file():
            r.quarantine(parts.manifest_path, "replaced by a repaired one")
        r.act(parts.manifest_path, "write manifest", "; ".join(changes),
              lambda a: parts.commit([f() if callable(f) else f for f in final]))
    for path in s.unlisted:
        r.quarantine(path, "a part no manifest lists (an import stopped before its commit)")


def _rebuild(r, s: PatchScan, parts: PatchParts) -> None:
    """An unreadable manifest: quarantined; the new one lists every readable part file (oldest name first,
    a format-1 file first), the first copy of each patch id kept."""
    r.quarantine(parts.manifest_path, s.manifest_error)
    found = sorted(parts.dir.glob("part-*.parquet"))
    if parts.legacy_path.is_file():
        found.insert(0, parts.legacy_path)
    read = [(p, t) for p in found if (t := read_part(p, ID_COLUMNS, full=True)[0]) is not None]
    final, _ = _keep(r, parts, [(p, None) for p, _ in read], first_copies(read), {})
    r.act(parts.manifest_path, "write manifest", f"lists the {len(read)} readable part file(s) found",
          lambda a: parts.commit([f() for f in final]))
