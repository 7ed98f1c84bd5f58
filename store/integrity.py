"""``mitoprobe store check`` and ``store repair``: find every damage in a store, fix what needs no guessing.

In the spirit of SQLite's ``PRAGMA integrity_check``, :func:`check` reads every byte (of result parts: the
footer and the key columns) and lists every problem, each with its path, what is wrong and the fix: every
Parquet file opens and matches its schema (``store/schema.py``; result parts may lack newer columns), the patches table's manifest and
parts agree and hold each patch id once (``store/patch_scan.py``), each embedding set's ``recipe.json`` parses and names its folder, its row count equals its ``COMPLETE`` record, no
(patch_id, view) key is stored twice, every key's patch exists, ``folds.parquet`` lists the AMi-Br
train patches in ``train_row`` order, and every LanceDB table matches its Parquet vectors (row count
and a sample of rows), standardised search columns and ``search_stats.json`` included, and no result
row is stored twice (``runs``: run_id + test_set; ``predictions``: run_id + test_set + split + patch_id;
two jobs that appended the same family), and every derived view (``store/derived.py``: the embedding
map's projection, the robustness index) reads back whole, checksums and manifest included. Warnings (an
interrupted embedding job, folds to recompute, staging leftovers of killed writers: ``store/leftovers.py``,
a derived view that is stale or whose set is gone) are reported but are not damage.

:func:`preflight` is the same scan, cheap (footers and small columns), run by every writer before its
first write: a damaged store is refused with the line :func:`check` prints for the damage, so a
command never writes on damage (and then fails, or stores results computed from it).

:func:`repair` plans (``dry_run``, the default) or takes an action for every damage :func:`check`
reports, and never deletes: a file it takes out moves to ``<store>/quarantine/<timestamp>/<its
relative path>`` (only staging leftovers no writer can own are deleted: unfinished writes).

* the patches table: a bad part is quarantined and leaves the manifest, a miscounted entry is read
  again from its part, a part listed twice is listed once, patch ids stored twice keep their first
  copy, an unreadable manifest is rebuilt from the readable part files (``store/patch_scan.py``), under
  the patches lock;
* an unreadable file, or a set whose ``recipe.json`` is unreadable: quarantined;
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
  the store's files, and the next write stamps it again);
* a damaged derived view, or the views of a set that is gone (or quarantined): quarantined (the next
  ``mitoprobe embed`` of the set rebuilds them; a stale view is left alone: it is never shown).

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

from . import derived, leftovers, migrations, patch_scan, schema
from .atomic import READ_ERRORS, write_json, write_parquet
from .errors import DamagedStoreError, StoreLockedError
from .features import EmbeddingSet, z_column
from .findings import REPAIR, Action, Problem
from .lock import describe, patches_lock
from .results import KEYS, RESULT_BATCH, RESULT_TABLES, SCHEMAS, UNIQUE_KEYS

__all__ = ["Action", "Problem", "check", "errors", "preflight", "repair", "summary"]

QUARANTINE_DIR = "quarantine"
LANCE_SAMPLE = 8  # rows compared between a LanceDB table and its Parquet parts
FOLD_COLUMNS = ("patch_id", "dataset", "split", "train_row", "slide", "label", "y")  # what the folds check reads


# -- reading, every byte ------------------------------------------------------------------------
def _read(path: Path) -> tuple[pa.Table | None, str | None]:
    try:
        return pq.read_table(path), None
    except READ_ERRORS as exc:
        text = " ".join(str(exc).replace(f"Could not open Parquet input source '{path}': ", "").split())
        return None, text[:200] or type(exc).__name__


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
    patches: patch_scan.PatchScan = field(default_factory=patch_scan.PatchScan)
    folds_error: str | None = None
    folds_missing_with_results: bool = False
    sets: list[_Set] = field(default_factory=list)
    orphan_lance: list[Path] = field(default_factory=list)
    results: dict[str, list[_Part]] = field(default_factory=dict)
    leftovers: list[leftovers.Leftover] = field(default_factory=list)
    derived: list[derived.Finding] = field(default_factory=list)

    @property
    def patch_ids(self) -> set | None:
        """The stored patch ids (after a repair: readable parts, first copies); None: unknown."""
        return self.patches.ids


def _footer(path: Path) -> tuple[pa.Schema | None, int, str | None]:
    """(schema, rows, None) from a Parquet file's footer, or (None, 0, why): what the preflight reads."""
    try:
        f = pq.ParquetFile(path)
        return f.schema_arrow, f.metadata.num_rows, None
    except READ_ERRORS as exc:
        return None, 0, " ".join(str(exc).split())[:200] or type(exc).__name__


def _amibr_train(kept: pa.Table) -> pa.Array:
    """The rows the folds list (AMi-Br's train patches), chosen in Arrow: the rest never becomes pandas."""
    return pc.and_(pc.equal(kept["dataset"], "AMi-Br"), pc.equal(kept["split"], "train"))


def _scan_folds(scan: _Scan, patches) -> None:
    st = scan.store
    folds, err = _read(st.folds_path)
    if err is None:
        bad = schema.type_problems(folds.schema, schema.FOLDS, missing_ok=False)
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


def _set_schema_error(actual: pa.Schema, expected: pa.Schema) -> str | None:
    bad = schema.type_problems(actual, expected, missing_ok=False)
    extra = [n for n in actual.names if n not in expected.names]
    bad += [f"unexpected column(s) {extra}"] if extra else []
    return "does not match the set's schema: " + "; ".join(bad) if bad else None


def _read_set_parts(s: _Set, by_age: list[Path], expected: pa.Schema) -> list[str]:
    """Every part read in full, one in memory at a time: keys, duplicates, the LanceDB sample; the views seen."""
    picked = set(np.linspace(0, len(by_age) - 1, LANCE_SAMPLE).astype(int).tolist()) if by_age else set()
    views: set = set()
    for n, path in enumerate(by_age):
        t, err = _read(path)
        err = err or _set_schema_error(t.schema, expected)
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
    return sorted(views)


def _footer_set_parts(s: _Set, by_age: list[Path], expected: pa.Schema) -> None:
    """The preflight's look: each part's footer (readable, the set's schema, its rows)."""
    for path in by_age:
        sch, rows, err = _footer(path)
        err = err or _set_schema_error(sch, expected)
        s.rows += 0 if err else rows
        s.parts.append(_Part(path, err))


def _read_complete_record(s: _Set) -> None:
    if (s.folder / "COMPLETE").is_file():
        try:
            s.complete_rows = json.loads((s.folder / "COMPLETE").read_text())["rows"]
            if not isinstance(s.complete_rows, int):
                raise ValueError(f"rows is {s.complete_rows!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            s.complete_rows, s.complete_error = None, " ".join(str(exc).split()) or type(exc).__name__


def _scan_set(scan: _Scan, folder: Path, full: bool = True) -> _Set:
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
    _read_complete_record(s)
    if not full:
        _footer_set_parts(s, by_age, expected)
        return s
    views = _read_set_parts(s, by_age, expected)
    s.views = list((s.eset.provenance.get("run") or {}).get("views") or views)
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


def _results_schema_error(sch: pa.Schema, table: str, kinds: dict) -> str | None:
    bad = schema.type_problems(sch, SCHEMAS[table], missing_ok=True)
    bad += [f"key column {k!r} missing" for k in KEYS[table] if k not in sch.names]
    for f in sch:  # parts are read together by column name: an extra column keeps one type
        k = schema._kind(f.type)
        if k != "null" and kinds.setdefault(f.name, k) != k:
            bad.append(f"column {f.name!r} is {f.type}, other parts hold {kinds[f.name]}")
    return "does not match the results schema: " + "; ".join(bad) if bad else None


def _scan_results(scan: _Scan, table: str, full: bool = True) -> list[_Part]:
    """Each part of ``table``: readable, its schema, and (``full``) rows stored twice; else footers only."""
    out, kinds, keys = [], {}, []
    by_age = sorted(scan.store.results.parts(table), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in by_age:  # oldest first: the first copy of a row is the one that stays
        hashes, (sch, _, err) = (_result_key_hashes(path, table) if full else (None, _footer(path)))
        err = err or _results_schema_error(sch, table, kinds)
        part = _Part(path, err)
        if err is None and full:
            keys.append((part, hashes))
        out.append(part)
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


def _result_key_hashes(path: Path, table: str) -> tuple[np.ndarray | None, tuple[pa.Schema | None, int, str | None]]:
    """A result part's key columns (``results.UNIQUE_KEYS``) read a batch (``RESULT_BATCH`` rows) at a time,
    keeping only each row's key hash (``_key_hashes``, 16 bytes): the footer and every key byte are checked,
    memory is one batch of keys, and the check's cost does not grow with the other columns (scores, the
    runs' JSON): those are read, and a damaged page reported, by whichever reader needs them."""
    sch, rows, err = _footer(path)
    if err is not None:
        return None, (sch, rows, err)
    try:
        f = pq.ParquetFile(path)
        cols = [c for c in UNIQUE_KEYS[table] if c in sch.names]
        hashes = [_key_hashes(_row_keys(b, table)) for b in f.iter_batches(batch_size=RESULT_BATCH, columns=cols)]
    except READ_ERRORS as exc:
        text = " ".join(str(exc).split())
        return None, (None, 0, text[:200] or type(exc).__name__)
    return (np.concatenate(hashes) if hashes else np.zeros((0, 2), np.uint64)), (sch, rows, None)


def _row_keys(t: pa.Table | pa.RecordBatch, table: str) -> np.ndarray:
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
    scan.patches = patch_scan.scan(store.patch_parts, schema.PATCH_COLUMNS, full=True)
    if scan.patches.kept is not None and store.folds_path.is_file():
        _scan_folds(scan, scan.patches.frame(_amibr_train))
    scan.leftovers = leftovers.find(store)
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
    scan.derived = derived.scan(store, [(s.folder, s.eset, s.holder is not None) for s in scan.sets])
    return scan


# -- check --------------------------------------------------------------------------------------
def _problems(scan: _Scan) -> list[Problem]:
    st, out = scan.store, []
    P = Problem
    if scan.stamp_error:
        out.append(P(migrations.stamp_path(st.root), scan.stamp_error, f"{REPAIR} (quarantines it; the format is "
                     "then read from the store's files and the next write stamps it)", "format"))
    out += patch_scan.problems(scan.patches, st.patch_parts)
    if scan.patches.manifest_error is None and scan.patches.kept is None and (scan.sets or any(scan.results.values())):
        out.append(P(st.patches_path, "missing while embeddings or results exist",
                     "`mitoprobe data import` the same data (vectors and results are keyed by patch id)",
                     "no-patches", "warning"))
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
    return out + derived.problems(scan.derived) + leftovers.problems(scan.leftovers)


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
        views = derived.folder(st.root, s.folder.name)
        if views.exists():
            r.quarantine(views, "the derived views of the quarantined set")
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
    """The patches table's repair (``store/patch_scan.py``), under the patches lock: no import commits meanwhile."""
    lock = patches_lock(r.store.root)
    try:
        if not r.dry_run:
            lock.acquire()
    except StoreLockedError as exc:
        r.act(r.store.patch_parts.dir, "skip", str(exc))
        return
    try:
        patch_scan.repair(r, scan.patches, r.store.patch_parts)
    finally:
        lock.release()


def repair(store, dry_run: bool = True) -> list[Action]:
    """The actions that make ``store`` pass :func:`check` without guessing; taken unless ``dry_run``.
    Every damage :func:`check` reports gets one; warnings about live writers (a set being written, a
    young staging file) get a "skip" saying why."""
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
    derived.repair(r, scan.derived)
    leftovers.repair(r, scan.leftovers)
    return r.actions


# -- the writers' preflight ---------------------------------------------------------------------
def preflight(store, *, embedding_set: str | None = None, results: bool = False, folds: bool = False) -> None:
    """Refuse a write on a damaged store before it writes anything: ``DamagedStoreError`` with the line
    :func:`check` prints for the first damage found in what the writer reads and changes.

    Every writer calls it at its start: the patches table always (every write derives from it: the
    manifest, each part's footer, row counts and schema, patch ids stored twice), ``embedding_set``
    (a recipe id: its recipe.json, parts' footers and ``COMPLETE``), ``results`` (every result part's
    footer), ``folds`` (the saved folds against the patches). Cheap by design: footers and the small
    columns (``patch_id``, ``dataset``; the folds' columns when folds are saved), never a pixel or a
    vector; ``store check`` reads every byte. Warnings never refuse."""
    if not store.root.is_dir():
        return
    scan = _Scan(store)
    with_folds = folds and store.folds_path.is_file()
    scan.patches = patch_scan.scan(store.patch_parts, FOLD_COLUMNS if with_folds else patch_scan.ID_COLUMNS)
    if with_folds and scan.patches.kept is not None:
        _scan_folds(scan, scan.patches.frame(_amibr_train))
    folder = store.features.dir / embedding_set if embedding_set else None
    if folder is not None and folder.is_dir():
        scan.sets.append(_scan_set(scan, folder, full=False))
    for table in RESULT_TABLES if results else ():
        scan.results[table] = _scan_results(scan, table, full=False)
    bad = errors(_problems(scan))
    if bad:
        raise bad[0].refusal()

