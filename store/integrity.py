"""``mitoprobe store check`` and ``store repair``: find every damage in a store, fix what needs no guessing.

In the spirit of SQLite's ``PRAGMA integrity_check``, :func:`check` reads every byte and lists every
problem, each with its path, what is wrong and the fix: every Parquet file opens and matches its
schema (``store/schema.py``; result parts may lack newer columns), every part the patches manifest
lists exists and holds the rows it records (a part no manifest lists, left by a killed import, is a
warning), each embedding set's
``recipe.json`` parses and names its folder, its row count equals its ``COMPLETE`` record, no
(patch_id, view) key is stored twice, every key's patch exists, ``folds.parquet`` lists the AMi-Br
train patches in ``train_row`` order, and every LanceDB table matches its Parquet vectors (row count
and a sample of rows), standardised search columns and ``search_stats.json`` included, and no result
row is stored twice (``runs``: run_id + test_set; ``predictions``: run_id + test_set + split + patch_id;
two jobs that appended the same family). Warnings (an interrupted embedding job, folds to recompute)
are reported but are not damage.

:func:`repair` plans (``dry_run``, the default) or takes these actions, and never deletes: a file it
takes out moves to ``<store>/quarantine/<timestamp>/<its relative path>``.

* an unreadable file, or a set whose ``recipe.json`` is unreadable: quarantined (a bad patches part
  also leaves ``patches/MANIFEST.json``, rewritten; an unreadable manifest is rebuilt from the
  readable part files; an unlisted part is quarantined);
* duplicate keys: the later part (by mtime, then name) is quarantined, or, when it also holds new
  keys, rewritten without the duplicates first (nothing readable is lost);
* result rows stored twice: the same, per result part: the first copy of each row (oldest part first)
  stays, a part holding only copies is quarantined, and a part holding both is rewritten with its
  first copies (same mtime) before the original, with its extra rows, moves to the quarantine;
  parts without copies are never touched;
* ``COMPLETE``: rewritten from the readable rows when every patch x view is there, else removed
  (quarantined) so the next ``mitoprobe embed`` recomputes what is missing;
* a missing, unreadable or stale LanceDB table, or one without the standardised search columns
  (built by an older mitoprobe) or whose ``search_stats.json`` is missing or disagrees: rebuilt from
  the Parquet parts (which also rewrites the statistics);
* a ``folds.parquet`` that no longer matches the patches: quarantined (the classifiers recompute
  the folds deterministically on next use);
* an unreadable ``FORMAT.json`` (``store/migrations.py``): quarantined (the format is then read from
  the store's files, and the next write stamps it again).

Sets a live job is writing are left alone (their lock is held, ``store/lock.py``).
The store never imports the classifiers: recomputing folds is their job.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import migrations, schema
from .atomic import READ_ERRORS, write_json, write_parquet
from .errors import DamagedStoreError, StoreLockedError
from .features import EmbeddingSet, z_column
from .lock import describe
from .patch_parts import readable
from .results import KEYS, RESULT_TABLES, SCHEMAS, UNIQUE_KEYS

QUARANTINE_DIR = "quarantine"
LANCE_SAMPLE = 8  # rows compared between a LanceDB table and its Parquet parts
REPAIR = "run `mitoprobe store repair --yes`"


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check`: ``severity`` "error" is damage, "warning" is reported only."""

    path: Path
    what: str
    fix: str
    kind: str = "damage"
    severity: str = "error"

    def __str__(self) -> str:
        head = "warning: " if self.severity == "warning" else ""
        return f"{head}{self.path}: {self.what}. Fix: {self.fix}"


@dataclass
class Action:
    """One step of :func:`repair`: ``done`` once taken."""

    path: Path
    action: str  # quarantine, rewrite part, write COMPLETE, rebuild LanceDB table, skip
    why: str
    done: bool = False
    target: Path | None = None  # where a quarantined file went

    def __str__(self) -> str:
        where = f" -> {self.target}" if self.target else ""
        return f"{self.action}: {self.path}{where} ({self.why})"


# -- reading, every byte ------------------------------------------------------------------------
def _read(path: Path) -> tuple[pa.Table | None, str | None]:
    try:
        return pq.read_table(path), None
    except READ_ERRORS as exc:
        text = " ".join(str(exc).replace(f"Could not open Parquet input source '{path}': ", "").split())
        return None, text[:200] or type(exc).__name__


def _type_problems(actual: pa.Schema, expected: pa.Schema, *, missing_ok: bool | tuple[str, ...]) -> list[str]:
    """Columns of ``actual`` whose type family differs from ``expected`` (vectors: exact type).
    ``missing_ok``: True, or the names of the columns that may be missing (added in a later version)."""
    out = []
    for f in expected:
        if f.name not in actual.names:
            if missing_ok is not True and f.name not in (missing_ok or ()):
                out.append(f"column {f.name!r} missing")
            continue
        t = actual.field(f.name).type
        exact = schema._kind(f.type) == "list"
        if t != f.type and (exact or schema._kind(t) not in ("null", schema._kind(f.type))):
            out.append(f"column {f.name!r} is {t}, expected {f.type}")
    return out


@dataclass
class _Part:
    path: Path
    error: str | None  # unreadable or wrong schema
    keep: np.ndarray | None = None  # rows that are not duplicates of earlier ones
    dup_runs: list[str] = field(default_factory=list)  # the run ids of its duplicated rows, for the message


@dataclass
class _Set:
    folder: Path
    eset: EmbeddingSet | None = None
    recipe_error: str | None = None
    parts: list[_Part] = field(default_factory=list)
    complete_rows: int | None = None
    complete_error: str | None = None
    holder: dict | None = None  # a live writer's lock record
    keys: set = field(default_factory=set)  # unique keys of the readable parts
    rows: int = 0  # rows of the readable parts
    views: list[str] = field(default_factory=list)
    covered: bool | None = None  # every patch x view stored (None: patches unknown)
    missing: int = 0
    orphans: int = 0
    lance_error: str | None = None
    sample: dict = field(default_factory=dict)  # (patch_id, view) -> {output: vector}, to compare with LanceDB

    @property
    def name(self) -> str:
        return self.eset.name if self.eset else self.folder.name

    @property
    def has_complete(self) -> bool:
        return (self.folder / "COMPLETE").is_file()

    @property
    def bad_parts(self) -> list[_Part]:
        return [p for p in self.parts if p.error]

    @property
    def dup_parts(self) -> list[_Part]:
        return [p for p in self.parts if p.keep is not None and not p.keep.all()]


@dataclass
class _Scan:
    store: object
    stamp_error: str | None = None  # why FORMAT.json cannot be read
    patches_error: str | None = None
    patches_path: Path | None = None  # what patches_error is about (the manifest), when not its parts
    bad_patch_parts: list = field(default_factory=list)  # (part, why): missing, unreadable, wrong schema or rows
    unlisted_parts: list = field(default_factory=list)  # part files no manifest lists (a killed import)
    patch_ids: set | None = None  # None: unknown (no or unreadable patches table)
    duplicate_patch_ids: int = 0
    n_patches: int = 0
    folds_error: str | None = None
    folds_missing_with_results: bool = False
    sets: list[_Set] = field(default_factory=list)
    orphan_lance: list[Path] = field(default_factory=list)
    results: dict[str, list[_Part]] = field(default_factory=dict)


def _scan_patches(scan: _Scan) -> None:
    """Every listed part read in full, a row group at a time (memory: one row group, plus the metadata)."""
    parts = scan.store.patch_parts
    if not parts.exists():
        return
    try:
        entries = parts.entries()
    except DamagedStoreError as exc:
        scan.patches_error = getattr(exc, "reason", str(exc))
        scan.patches_path = parts.manifest_path
        return
    scan.unlisted_parts = parts.unlisted()
    metas = []
    for e in entries:
        path = parts.path_of(e)
        if not path.is_file():
            scan.bad_patch_parts.append((path, "is listed in patches/MANIFEST.json but missing"))
            continue
        meta, err = _read_patch_part(path)
        if err is None:
            if e.get("rows") is not None and meta.num_rows != e["rows"]:
                err = f"holds {meta.num_rows} rows, patches/MANIFEST.json records {e['rows']}"
        if err:
            scan.bad_patch_parts.append((path, err))
            continue
        metas.append(meta.to_pandas())
    if scan.bad_patch_parts:  # the rest is checked against the readable parts: the table a repair leaves
        scan.patches_error = "; ".join(f"{p.name} {why}" for p, why in scan.bad_patch_parts)
    meta = pd.concat(metas, ignore_index=True) if metas else pd.DataFrame(columns=list(schema.PATCH_COLUMNS))
    ids = meta["patch_id"].tolist()
    scan.patch_ids, scan.n_patches = set(ids), len(ids)
    scan.duplicate_patch_ids = len(ids) - len(scan.patch_ids)
    if scan.store.folds_path.is_file():
        _scan_folds(scan, meta)


def _read_patch_part(path: Path) -> tuple[pa.Table | None, str | None]:
    """(metadata, None) when every row group of the part reads and its schema is the patches', else
    (None, why). One pass, a row group at a time: the PNGs are read (that is the check) and dropped."""
    try:
        f = pq.ParquetFile(path)
        bad = _type_problems(f.schema_arrow, schema.PATCHES, missing_ok=schema.ADDED_PATCH_COLUMNS)
        if bad:
            return None, "does not match the patches schema: " + "; ".join(bad)
        cols = [c for c in schema.PATCH_COLUMNS if c in f.schema_arrow.names]
        groups = [f.read_row_group(g).select(cols) for g in range(f.metadata.num_row_groups)]
    except READ_ERRORS as exc:
        return None, " ".join(str(exc).split()) or type(exc).__name__
    return (pa.concat_tables(groups) if groups else f.schema_arrow.empty_table().select(cols)), None


def _scan_folds(scan: _Scan, patches) -> None:
    st = scan.store
    folds, err = _read(st.folds_path)
    if err is None:
        bad = _type_problems(folds.schema, schema.FOLDS, missing_ok=False)
        err = "does not match the folds schema: " + "; ".join(bad) if bad else None
    if err is None:
        f = folds.to_pandas()
        tr = patches[(patches["dataset"] == "AMi-Br") & (patches["split"] == "train")]
        tr = tr.sort_values("train_row", kind="mergesort").reset_index(drop=True)
        same = len(f) == len(tr) and all(
            [None if v != v else v for v in f[c].tolist()] == [None if v != v else v for v in tr[c].tolist()]
            for c in ("patch_id", "train_row", "slide", "label", "y"))
        if not same:
            err = ("does not list the stored AMi-Br train patches in train_row order (data re-imported "
                   "since the folds were saved?)")
        elif f["fold"].isna().any() or (f["fold"] < 0).any():
            err = "has patches without a fold"
    scan.folds_error = err


def _scan_set(scan: _Scan, folder: Path) -> _Set:
    st = scan.store
    s = _Set(folder)
    try:
        s.eset = st.features._set_of(folder)
    except DamagedStoreError as exc:
        s.recipe_error = getattr(exc, "reason", str(exc))
        return s
    s.holder = st.features.lock(s.eset.recipe_id, s.eset.name).held_elsewhere()
    expected = schema.embedding_schema(s.eset.outputs)
    by_age = sorted(s.eset.parts, key=lambda p: (p.stat().st_mtime_ns, p.name))
    picked = set(np.linspace(0, len(by_age) - 1, LANCE_SAMPLE).astype(int).tolist()) if by_age else set()
    views: set = set()
    for n, path in enumerate(by_age):  # one part in memory at a time
        t, err = _read(path)
        if err is None:
            bad = _type_problems(t.schema, expected, missing_ok=False)
            extra = [n for n in t.column_names if n not in expected.names]
            if bad or extra:
                bad += [f"unexpected column(s) {extra}"] if extra else []
                err = "does not match the set's schema: " + "; ".join(bad)
        part = _Part(path, err)
        if not err and n in picked and t.num_rows:
            i = t.num_rows // 2
            s.sample[(t["patch_id"][i].as_py(), t["view"][i].as_py())] = {o: t[o][i].as_py() for o in s.eset.outputs}
        if not err:
            keys = list(zip(t["patch_id"].to_pylist(), t["view"].to_pylist()))
            keep = np.ones(len(keys), dtype=bool)
            for i, k in enumerate(keys):
                if k in s.keys:
                    keep[i] = False
                else:
                    s.keys.add(k)
            part.keep = keep
            s.rows += len(keys)
            views.update(v for _, v in keys)
        s.parts.append(part)
    s.views = list((s.eset.provenance.get("run") or {}).get("views") or sorted(views))
    if (folder / "COMPLETE").is_file():
        try:
            s.complete_rows = json.loads((folder / "COMPLETE").read_text())["rows"]
            if not isinstance(s.complete_rows, int):
                raise ValueError(f"rows is {s.complete_rows!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            s.complete_rows, s.complete_error = None, " ".join(str(exc).split()) or type(exc).__name__
    if scan.patch_ids is not None:
        have = {pid for pid, _ in s.keys}
        s.orphans = len(have - scan.patch_ids)
        s.missing = sum(1 for pid in scan.patch_ids for v in s.views if (pid, v) not in s.keys)
        s.covered = s.missing == 0 and bool(s.views)
    if s.holder is None:
        s.lance_error = _scan_lance(st, s)
    return s


def _scan_lance(st, s: _Set) -> str | None:
    """What is wrong with the set's LanceDB table (None: fine, or not needed)."""
    where = st.features.lance_path(s.eset.recipe_id)
    if not where.is_dir():
        return "is missing" if s.has_complete else None
    try:
        tbl = st.features._lance(create=False).open_table(s.eset.recipe_id)
        n = tbl.count_rows()
        if n != s.rows:
            return f"has {n} rows, the Parquet parts {s.rows}"
        if not s.sample:
            return None
        z_missing = [z_column(o) for o in s.eset.outputs if z_column(o) not in tbl.schema.names]
        ids = sorted({pid for pid, _ in s.sample})
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        got = tbl.search().where(f"patch_id IN ({quoted})").limit(len(ids) * max(1, len(s.views)) * 4).to_arrow()
        lance_rows = {(r["patch_id"], r["view"]): r for r in got.to_pylist()}
        for key, vectors in sorted(s.sample.items()):
            row = lance_rows.get(key)
            for out, vec in vectors.items():
                if row is None or not np.array_equal(np.asarray(row[out], np.float32), np.asarray(vec, np.float32)):
                    return f"differs from the Parquet parts at {key}"
        if z_missing:
            return f"lacks the standardised search column(s) {z_missing} (built by an older mitoprobe)"
        try:
            stats = st.features.search_stats(s.eset)
        except DamagedStoreError as exc:
            return f"has no valid search statistics ({getattr(exc, 'reason', None) or exc})"
        for key, vectors in sorted(s.sample.items()):
            for out, vec in vectors.items():
                want = st.features.standardize(s.eset, out, np.asarray(vec, np.float32), stats)
                if not np.allclose(np.asarray(lance_rows[key][z_column(out)], np.float32), want, rtol=1e-5, atol=1e-5):
                    return f"standardised column {z_column(out)!r} disagrees with search_stats.json at {key}"
    except (*READ_ERRORS, KeyError) as exc:
        return "cannot be read: " + (" ".join(str(exc).split())[:200] or type(exc).__name__)
    return None


def _scan_results(scan: _Scan, table: str) -> list[_Part]:
    out, kinds, keys = [], {}, []
    by_age = sorted(scan.store.results.parts(table), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in by_age:  # oldest first: the first copy of a row is the one that stays
        t, err = _read(path)
        if err is None:
            bad = _type_problems(t.schema, SCHEMAS[table], missing_ok=True)
            bad += [f"key column {k!r} missing" for k in KEYS[table] if k not in t.column_names]
            for f in t.schema:  # parts are read together by column name: an extra column keeps one type
                k = schema._kind(f.type)
                if k != "null" and kinds.setdefault(f.name, k) != k:
                    bad.append(f"column {f.name!r} is {f.type}, other parts hold {kinds[f.name]}")
            err = "does not match the results schema: " + "; ".join(bad) if bad else None
        part = _Part(path, err)
        if err is None:  # only the 16-byte hashes are kept, never the key strings of every row
            keys.append((part, _key_hashes(_row_keys(t, table))))
        out.append(part)
        del t
    if keys:
        dup = pd.DataFrame(np.concatenate([h for _, h in keys])).duplicated(keep="first").to_numpy()
        start = 0
        for part, h in keys:
            part.keep = ~dup[start:start + len(h)]
            start += len(h)
            if not part.keep.all():  # rare: read the run ids of this part's copies for the message
                run_ids = pq.read_table(part.path, columns=["run_id"])["run_id"].to_numpy(zero_copy_only=False)
                part.dup_runs = sorted(set(run_ids[~part.keep].tolist()))
    return sorted(out, key=lambda p: p.path.name)


def _row_keys(t: pa.Table, table: str) -> np.ndarray:
    """Each row's unique key (``results.UNIQUE_KEYS``) as one string, fields joined by a unit separator;
    a missing ``split`` means "test" (parts written before it existed)."""
    cols = []
    for c in UNIQUE_KEYS[table]:
        col = pc.cast(t[c], pa.large_string()) if c in t.column_names else pa.nulls(t.num_rows, pa.large_string())
        cols.append(pc.fill_null(col, "test" if c == "split" else "\x00"))
    joined = pc.binary_join_element_wise(*cols, pa.scalar("\x1f", pa.large_string())) if len(cols) > 1 else cols[0]
    return np.asarray(joined.to_numpy(zero_copy_only=False), dtype=object)


def _key_hashes(keys: np.ndarray) -> np.ndarray:
    """Two independent 64-bit hashes per key (128 bits: a collision among a store's rows is out of reach),
    so every key of a large ``predictions`` table fits in memory at 16 bytes a row."""
    return np.column_stack([pd.util.hash_array(keys, hash_key=k, categorize=False)
                            for k in ("mitoprobe-dup-k1", "mitoprobe-dup-k2")])


def _scan(store) -> _Scan:
    scan = _Scan(store, migrations.stamp_error(store.root))
    _scan_patches(scan)
    scan.folds_missing_with_results = not store.folds_path.is_file() and bool(store.results.parts("runs"))
    fs = store.features
    if fs.dir.is_dir():
        for d in sorted(fs.dir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and ((d / "recipe.json").exists() or any(d.glob("part-*"))):
                scan.sets.append(_scan_set(scan, d))
    if fs.lance_dir.is_dir():
        names = {s.folder.name for s in scan.sets}
        scan.orphan_lance = [p for p in sorted(fs.lance_dir.glob("*.lance")) if p.name[:-len(".lance")] not in names]
    for table in RESULT_TABLES:
        scan.results[table] = _scan_results(scan, table)
    return scan


# -- check --------------------------------------------------------------------------------------
def _problems(scan: _Scan) -> list[Problem]:
    st, out = scan.store, []
    P = Problem
    if scan.stamp_error:
        out.append(P(migrations.stamp_path(st.root), scan.stamp_error, f"{REPAIR} (quarantines it; the format is "
                     "then read from the store's files and the next write stamps it)", "format"))
    fix = f"{REPAIR} (quarantines it), then `mitoprobe data import` the same data"
    if scan.patches_path is not None:
        out.append(P(scan.patches_path, f"cannot be read ({scan.patches_error})", fix, "unreadable"))
    for path, why in scan.bad_patch_parts:
        what = why if why.startswith(("is listed", "does not", "holds")) else f"cannot be read ({why})"
        out.append(P(path, what, fix.replace("quarantines it", "quarantines it and drops it from the manifest"),
                     "unreadable"))
    if not scan.patches_error and scan.patch_ids is None and (scan.sets or any(scan.results.values())):
        out.append(P(st.patches_path, "missing while embeddings or results exist",
                     "`mitoprobe data import` the same data (vectors and results are keyed by patch id)",
                     "no-patches", "warning"))
    for path in scan.unlisted_parts:
        out.append(P(path, "a patches part no manifest lists (an import stopped before its commit)",
                     f"{REPAIR} (quarantines it; nothing stored refers to it)", "unlisted-part", "warning"))
    if scan.duplicate_patch_ids:
        out.append(P(st.patches_path, f"{scan.duplicate_patch_ids} patch ids occur twice",
                     "re-import with `mitoprobe data import --replace`", "duplicate-patches"))
    if scan.folds_error:
        out.append(P(st.folds_path, scan.folds_error, f"{REPAIR} (quarantines it; the folds are recomputed "
                     "deterministically on next use)", "folds"))
    if scan.folds_missing_with_results:
        out.append(P(st.folds_path, "missing while probe results exist", "nothing to do: `mitoprobe probe` "
                     "recomputes the same folds (deterministic) and saves them", "folds-missing", "warning"))
    for s in scan.sets:
        out += _set_problems(st, s)
    for p in scan.orphan_lance:
        out.append(P(p, "a LanceDB table without an embedding set", f"{REPAIR} (quarantines it)", "orphan-lance",
                     "warning"))
    for table, parts in scan.results.items():
        out += [P(p.path, p.error, f"{REPAIR} (quarantines it; the other results stay)", "unreadable")
                for p in parts if p.error]
        for p in parts:
            if p.keep is not None and not p.keep.all():
                n, ids = int((~p.keep).sum()), p.dup_runs
                shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
                out.append(P(p.path, f"{n} {table} rows already stored (same {' + '.join(UNIQUE_KEYS[table])}; "
                             f"run id(s) {shown}): the same results appended twice (two jobs on one family)",
                             f"{REPAIR} (moves the extra rows to the quarantine; one copy of each stays)",
                             "duplicates"))
    return out


def _set_problems(st, s: _Set) -> list[Problem]:
    P, out = Problem, []
    if s.recipe_error:
        return [P(s.folder / "recipe.json", s.recipe_error,
                  f"{REPAIR} (quarantines the set; `mitoprobe embed` then recomputes it)", "recipe")]
    resume = f"`mitoprobe embed --model {s.name}` resumes it"
    for p in s.bad_parts:
        out.append(P(p.path, p.error if "schema" in p.error else f"cannot be read ({p.error})",
                     f"{REPAIR} (quarantines it; then {resume})", "unreadable"))
    for p in s.dup_parts:
        n = int((~p.keep).sum())
        out.append(P(p.path, f"{n} (patch_id, view) keys already stored in an earlier part (two writers, or a "
                     "copied part)", f"{REPAIR} (quarantines the duplicates)", "duplicates"))
    if s.holder is not None:
        out.append(P(s.folder, f"being written by {describe(s.holder)}", "wait for that job to finish",
                     "writing", "warning"))
        return out
    if s.orphans:
        out.append(P(s.folder, f"{s.orphans} stored patch ids are not in the patches table (data re-imported, or "
                     "a damaged patches part quarantined?)", "nothing to do if they were dropped on purpose (probes "
                     "ignore them); else `mitoprobe data import` the same data again", "orphans", "warning"))
    complete = s.folder / "COMPLETE"
    if s.complete_error:
        out.append(P(complete, f"cannot be read ({s.complete_error})", f"{REPAIR} (rewrites or removes it)",
                     "complete"))
    elif s.complete_rows is not None and s.complete_rows != s.rows:
        out.append(P(complete, f"records {s.complete_rows} rows, the readable parts hold {s.rows}",
                     f"{REPAIR} (rewrites it, or removes it so that {resume})", "complete"))
    elif s.complete_rows is None and s.covered and not s.bad_parts:
        out.append(P(complete, f"missing although every patch x view is stored ({s.rows} rows)",
                     f"{REPAIR} (rewrites it), or `mitoprobe embed --model {s.name}`", "complete"))
    if not s.has_complete and not s.covered and s.parts:
        total = f" of {s.rows + s.missing}" if s.covered is not None else ""
        out.append(P(s.folder, f"set {s.name} is incomplete: {s.rows}{total} rows and no COMPLETE record",
                     resume, "incomplete", "warning"))
    elif s.has_complete and s.covered is False and not s.complete_error and s.complete_rows == s.rows:
        out.append(P(s.folder, f"{s.missing} patch x view keys are not embedded (patches added since?)",
                     resume.replace("resumes it", "adds them"), "coverage", "warning"))
    if s.lance_error:
        out.append(P(st.features.lance_path(s.eset.recipe_id), f"LanceDB table {s.lance_error}",
                     f"{REPAIR} (rebuilds it from the Parquet parts)", "lance"))
    return out


def check(store) -> list[Problem]:
    """Every problem in ``store`` (errors first, then warnings); an empty list means all is well."""
    if store.root.exists() and not store.root.is_dir():
        return [Problem(store.root, "is a file, not a store folder", "pass --store with a folder path", "not-a-store")]
    problems = _problems(_scan(store))
    return sorted(problems, key=lambda p: p.severity != "error")


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def summary(store) -> str:
    """One line of counts for a clean store."""
    sets = store.features.sets()
    rows = sum(pq.ParquetFile(p).metadata.num_rows for s in sets for p in s.parts)
    res = ", ".join(f"{sum(pq.ParquetFile(p).metadata.num_rows for p in store.results.parts(t))} {t}"
                    for t in RESULT_TABLES if store.results.parts(t))
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in store.patch_parts.part_paths()) if store.has_patches() else 0
    return (f"{n} patches, {len(sets)} embedding set(s) ({rows} rows), results: {res or 'none'}, "
            f"folds: {'saved' if store.folds_path.is_file() else 'not saved yet'}")


# -- repair -------------------------------------------------------------------------------------
class _Repair:
    def __init__(self, store, dry_run: bool):
        self.store, self.dry_run = store, dry_run
        self.actions: list[Action] = []
        self.qroot = store.root / QUARANTINE_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        while self.qroot.exists():
            self.qroot = self.qroot.with_name(self.qroot.name + "-" + uuid.uuid4().hex[:4])

    def act(self, path: Path, action: str, why: str, do=None) -> Action:
        a = Action(path, action, why)
        self.actions.append(a)
        if not self.dry_run and do is not None:
            do(a)
            a.done = True
        return a

    def quarantine(self, path: Path, why: str) -> Action:
        def move(a: Action) -> None:
            target = self.qroot / path.relative_to(self.store.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            a.target = target

        a = self.act(path, "quarantine", why, move)
        if a.target is None:
            a.target = self.qroot / path.relative_to(self.store.root)
        return a


def _repair_set(r: _Repair, s: _Set) -> None:
    st = r.store
    if s.recipe_error:
        r.quarantine(s.folder, f"recipe.json {s.recipe_error}")
        lance = st.features.lance_path(s.folder.name)
        if lance.exists():
            r.quarantine(lance, "the LanceDB table of the quarantined set")
        return
    for p in s.bad_parts:
        r.quarantine(p.path, p.error)
    changed = bool(s.bad_parts)
    for p in s.dup_parts:
        changed = True
        if not p.keep.any():
            r.quarantine(p.path, "every key in it is stored in an earlier part")
            continue
        keep = p.keep

        def rewrite(a: Action, p=p, keep=keep) -> None:
            new = p.path.with_name(f"part-{len(s.parts):05d}-{uuid.uuid4().hex[:8]}.parquet")
            write_parquet(pq.read_table(p.path).filter(pa.array(keep)), new)

        r.act(p.path, "rewrite part", f"keeps its {int(keep.sum())} new rows in a new part, drops "
              f"{int((~keep).sum())} duplicates", rewrite)
        r.quarantine(p.path, "its new rows were rewritten to a new part")
    rows = len(s.keys)
    complete = s.folder / "COMPLETE"
    ok_complete = s.has_complete and not s.complete_error and s.complete_rows == rows  # rows: after the repair
    if s.covered and not ok_complete:
        if s.has_complete:
            r.quarantine(complete, f"it records {s.complete_rows} rows, the set holds {rows}")
        r.act(complete, "write COMPLETE", f"every patch x view is stored ({rows} rows)",
              lambda a: write_json({"rows": rows, "finished": time.time(), "repaired": True}, complete))
        will_complete = True
    elif s.has_complete and not ok_complete:
        r.quarantine(complete, f"the set is incomplete ({rows} rows): `mitoprobe embed --model {s.name}` "
                     "recomputes the missing rows")
        will_complete = False
    else:
        will_complete = s.has_complete
    lance = st.features.lance_path(s.eset.recipe_id)
    if rows and (s.lance_error or (changed and (lance.exists() or will_complete))
                 or (will_complete and not lance.exists())):
        if s.lance_error and s.lance_error.startswith("cannot be read") and lance.exists():
            r.quarantine(lance, "an unreadable LanceDB table, replaced by a rebuilt one")
        why = f"the table {s.lance_error}" if s.lance_error else "the Parquet parts changed"
        r.act(lance, "rebuild LanceDB table", why,
              lambda a: st.features.build_lance(st.features._set_of(s.folder)))
    elif not rows and lance.exists():
        r.quarantine(lance, "its set has no readable vectors left")


def _repair_result_part(r: _Repair, table: str, p: _Part) -> None:
    """Result rows stored twice: the part's extra copies go to the quarantine, its first copies stay."""
    n_dup, n_keep = int((~p.keep).sum()), int(p.keep.sum())
    if not n_keep:
        r.quarantine(p.path, f"its {n_dup} {table} rows are all stored already")
        return
    new = p.path.with_name(f"{p.path.stem}-dedup-{uuid.uuid4().hex[:8]}.parquet")

    def rewrite(a: Action, keep=p.keep) -> None:
        mtime = p.path.stat().st_mtime_ns
        write_parquet(pq.read_table(p.path).filter(pa.array(keep)), new)  # atomic
        os.utime(new, ns=(mtime, mtime))  # keeps its place in "oldest copy stays"
        a.target = new

    r.act(p.path, "rewrite part", f"keeps its {n_keep} rows stored once in a new part, without its {n_dup} "
          "extra copies", rewrite)
    r.quarantine(p.path, f"the original, with its {n_dup} extra {table} rows (its other rows were rewritten)")


def _repair_patches(r: _Repair, scan: _Scan) -> None:
    """Bad parts go to the quarantine and leave the manifest (their datasets are then re-imported); an
    unreadable manifest is quarantined and rebuilt listing every readable part file; unlisted parts of
    a killed import are quarantined."""
    parts = r.store.patch_parts
    if scan.patches_path is not None:
        r.quarantine(scan.patches_path, scan.patches_error)
        found = [p for p in sorted(parts.dir.glob("part-*.parquet")) if readable(p) is None]
        if parts.legacy_path.is_file() and readable(parts.legacy_path) is None:
            found.insert(0, parts.legacy_path)
        r.act(parts.manifest_path, "write manifest", f"lists the {len(found)} readable part file(s) found",
              lambda a: parts.commit([parts.entry_of(p) for p in found]))
        return
    bad = {p for p, _ in scan.bad_patch_parts}
    if bad:
        entries = parts.entries()
        keep = [e for e in entries if parts.path_of(e) not in bad]
        lost = sorted({d for e in entries if parts.path_of(e) in bad for d in (e.get("datasets") or {})})
        for path, why in scan.bad_patch_parts:
            if path.exists():
                r.quarantine(path, why)
        if parts.manifest_path.is_file():  # a format-1 store's one file just goes: no manifest to write
            r.quarantine(parts.manifest_path, "replaced by one without the bad part(s)")
            r.act(parts.manifest_path, "write manifest", f"without the {len(bad)} bad part(s): `mitoprobe data "
                  f"import` the data of {', '.join(lost) or 'their datasets'} again", lambda a: parts.commit(keep))
    for path in scan.unlisted_parts:
        r.quarantine(path, "a part no manifest lists (an import stopped before its commit)")


def repair(store, dry_run: bool = True) -> list[Action]:
    """The actions that make ``store`` pass :func:`check` without guessing; taken unless ``dry_run``.

    Damage that needs a decision (patch ids stored twice) gets no action: :func:`check` still lists it."""
    if store.root.exists() and not store.root.is_dir():
        return []
    scan = _scan(store)
    r = _Repair(store, dry_run)
    if scan.stamp_error:
        r.quarantine(migrations.stamp_path(store.root), scan.stamp_error)
    _repair_patches(r, scan)
    if scan.folds_error:
        r.quarantine(store.folds_path, scan.folds_error)
    for table, parts in scan.results.items():
        for p in parts:
            if p.error:
                r.quarantine(p.path, p.error)
            elif p.keep is not None and not p.keep.all():
                _repair_result_part(r, table, p)
    for s in scan.sets:
        if s.holder is not None:
            r.act(s.folder, "skip", f"being written by {describe(s.holder)}")
            continue
        lock = store.features.lock(s.folder.name, s.name)
        try:
            if not dry_run:
                lock.acquire()
        except StoreLockedError as exc:
            r.act(s.folder, "skip", str(exc))
            continue
        try:
            _repair_set(r, s)
        finally:
            lock.release()
    for p in scan.orphan_lance:
        r.quarantine(p, "a LanceDB table without an embedding set")
    return r.actions

