"""Embedding sets: Parquet parts (canonical) + a LanceDB table (similarity search).

Layout under ``<store>/embeddings/<recipe_id>/``::

    recipe.json          provenance: name, recipe id, recipe config, weights, library versions,
                         output names and dimensions
    part-*.parquet       patch_id, view, one fixed-size-list column per output (e.g. cls, mean)
    COMPLETE             written once every patch x view is in (carries the row count)
    search_stats.json    the per-dimension mean/std that standardise vectors for similarity search
                         (computed on the AMi-Br train patches; see ``FeatureStore.build_lance``)

Parts are written atomically one chunk at a time, so a killed job loses at most the chunk in
flight and a resumed job appends only the missing (patch_id, view) keys: no loss, no duplicates.
The LanceDB table ``<store>/lance/<recipe_id>.lance`` is rebuilt from the parts on finalise; beside
each raw output column it holds the standardised copy ``<output>__z`` that search uses by default.

One writer per set: ``FeatureStore.writer`` takes the set's lock (``store/lock.py``) before its first
write; a second job gets :class:`StoreLockedError` naming the holder. Readers refuse what they cannot
trust with one line naming the path (:class:`DamagedStoreError`): an unreadable part or recipe.json,
duplicate keys, a row count that disagrees with ``COMPLETE``, a missing LanceDB table; and, when
reading for probing (``require_complete``), a set without ``COMPLETE``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import migrations
from .atomic import (CHECK_HINT, damaged, env_errors, make_dirs, read_guard, remove_dirs, sweep_tmp, write_json,
                     write_parquet)
from .errors import DamagedStoreError, StaleFeaturesError, StoreError
from .keys import distinct_count
from .memory import releasing
from .patch_parts import PatchParts
from .lock import SetLock, describe, set_lock
from .schema import KEY_COLUMNS, embedding_schema, validate

log = logging.getLogger(__name__)

ANN_MIN_ROWS = 50_000  # below this, exact (brute-force) search is both fast and exact
ANN_DEFAULT_INDEX = "IVF_HNSW_SQ"
SEARCH_STATS_FILE = "search_stats.json"
SEARCH_STATS_VERSION = 1
Z_SUFFIX = "__z"  # the LanceDB column of an output's standardised vectors: "<output>__z"
STATS_DATASET, STATS_SPLIT = "AMi-Br", "train"  # the rows whose mean/std standardise every vector


def z_column(output: str) -> str:
    """The LanceDB column holding ``output``'s standardised (z-scored) search vectors."""
    return output + Z_SUFFIX


def standardize(X: np.ndarray, mean, std) -> np.ndarray:
    """``(X - mean) / std`` per dimension, computed in float64, returned as float32; ``std`` already
    has its zeros replaced by 1. The one implementation: the table's columns, a query, the dashboard."""
    X = np.asarray(X, dtype=np.float64)
    return ((X - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)).astype(np.float32)


LANCE_DAMAGE = ("not found", "lanceerror(io)", "corrupt")  # how LanceDB words a missing, short or corrupt file


@contextlib.contextmanager
def lance_guard(where: Path, what: str) -> Iterator[None]:
    """A LanceDB read of the table at ``where``: a missing, truncated or corrupt file (``LANCE_DAMAGE``, or
    an ``OSError``) is damage (``DamagedStoreError``, pointing at ``store check``); any other LanceDB error
    (``RuntimeError``: a query it refuses, e.g. "ef must be greater than or equal to k") is not, and is said
    as what it is (a ``StoreError`` quoting LanceDB), since ``store check`` would find nothing to repair."""
    try:
        yield
    except DamagedStoreError:
        raise
    except OSError as exc:
        raise damaged(where, exc, what) from exc
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        if any(m in text.lower() for m in LANCE_DAMAGE):
            raise damaged(where, exc, what) from exc
        import lancedb

        raise StoreError(f"{where}: LanceDB {lancedb.__version__} refused the query ({text[:300]}); the table "
                         "is not damaged: report this with the command that raised it") from exc


@dataclass(frozen=True)
class EmbeddingSet:
    """One stored set: the folder and its provenance."""

    path: Path
    recipe_id: str
    name: str
    outputs: dict[str, int]
    provenance: dict
    complete: bool

    @property
    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    @property
    def complete_path(self) -> Path:
        return self.path / "COMPLETE"


def part_rows(part: Path) -> int:
    """Rows of one Parquet part from its footer (``DamagedStoreError`` when unreadable)."""
    with read_guard(part):
        return pq.ParquetFile(part).metadata.num_rows


def read_complete(eset: EmbeddingSet) -> int | None:
    """The row count the set's ``COMPLETE`` record holds; None without one."""
    p = eset.complete_path
    if not p.is_file():
        return None
    with read_guard(p):
        info = json.loads(p.read_text())
    rows = info.get("rows") if isinstance(info, dict) else None
    if not isinstance(rows, int) or rows < 0:
        raise damaged(p, f"rows is {rows!r}, not a count", "is not a valid COMPLETE record")
    return rows


def parse_recipe_json(folder: Path) -> dict:
    """A set folder's ``recipe.json``, checked: it parses, names the recipe, its outputs, and the
    recipe id that is the folder's name. ``DamagedStoreError`` otherwise."""
    meta = folder / "recipe.json"
    with read_guard(meta):
        info = json.loads(meta.read_text())
    with read_guard(meta, "is not a valid recipe record", errors=(ValueError, TypeError, AttributeError)):
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        for k in ("recipe_id", "name", "outputs"):
            if k not in info:
                raise ValueError(f"no {k!r}")
        info["outputs"] = {str(k): int(v) for k, v in dict(info["outputs"]).items()}
        if info["recipe_id"] != folder.name:
            raise ValueError(f"recipe_id {info['recipe_id']!r} is not the folder name {folder.name!r}")
    return info


def _vector_column(vectors: np.ndarray, dim: int, where: str) -> pa.FixedSizeListArray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise StoreError(f"{where}: vectors have shape {vectors.shape}, expected (n, {dim}); "
                         "the recipe's declared output dimension and the model disagree")
    if not np.isfinite(vectors).all():
        bad = np.where(~np.isfinite(vectors).all(axis=1))[0][:5]
        raise StoreError(f"{where}: non-finite values in rows {bad.tolist()}; refusing to store them")
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)


class EmbeddingWriter:
    """Append chunks to one set; resumable. Obtain from ``FeatureStore.writer``.

    Holds the set's lock until ``finalize`` (success or failure), ``close``, the end of a ``with``
    block, or garbage collection, whichever comes first."""

    def __init__(self, fs: "FeatureStore", eset: EmbeddingSet, lock: SetLock | None = None):
        self.fs = fs
        self.eset = eset
        self._release = weakref.finalize(self, lock.release) if lock is not None else None
        try:
            sweep_tmp(eset.path)
            self._next_part = len(eset.parts)
            self._done = fs.stored_keys(eset)
            rows = sum(part_rows(p) for p in eset.parts)
            if rows != len(self._done):
                raise fs.duplicates_error(eset, rows, len(self._done))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the set's lock (idempotent); the writer cannot write afterwards."""
        if self._release is not None:
            self._release()

    @property
    def closed(self) -> bool:
        return self._release is not None and not self._release.alive

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done_keys(self) -> set[tuple[str, str]]:
        """(patch_id, view) pairs already stored under this recipe id."""
        return set(self._done)

    def write_chunk(self, patch_ids: Sequence[str], views: Sequence[str], vectors: dict[str, np.ndarray]) -> int:
        """Store one chunk atomically; keys already stored are dropped. Returns rows written."""
        if set(vectors) != set(self.eset.outputs):
            raise StoreError(f"set {self.eset.name}: got outputs {sorted(vectors)}, "
                             f"expected {sorted(self.eset.outputs)}")
        if self.closed:
            raise StoreError(f"the writer of set {self.eset.name} is closed (finalised); open a new one with "
                             "FeatureStore.writer")
        keys = list(zip(map(str, patch_ids), map(str, views)))
        if len(set(keys)) != len(keys):
            raise StoreError(f"set {self.eset.name}: duplicate (patch_id, view) keys in one chunk")
        keep = np.array([k not in self._done for k in keys], dtype=bool)
        if not keep.any():
            return 0
        cols = {
            "patch_id": pa.array([k[0] for k, m in zip(keys, keep) if m], pa.string()),
            "view": pa.array([k[1] for k, m in zip(keys, keep) if m], pa.string()),
        }
        for out, dim in self.eset.outputs.items():
            arr = np.asarray(vectors[out])
            if arr.shape[0] != len(keys):
                raise StoreError(f"set {self.eset.name}: output {out} has {arr.shape[0]} rows for {len(keys)} keys")
            cols[out] = _vector_column(arr[keep], dim, f"set {self.eset.name} output {out}")
        part = self.eset.path / f"part-{self._next_part:05d}-{uuid.uuid4().hex[:8]}.parquet"
        table = validate(pa.table(cols), embedding_schema(self.eset.outputs), str(part))
        if self.eset.complete_path.is_file():
            # Extending a finished set (new patches imported): it is not complete until finalize
            # says so again, so a killed job leaves an incomplete set, never a wrong COMPLETE.
            with env_errors(self.eset.complete_path):
                self.eset.complete_path.unlink(missing_ok=True)
        # A random suffix: two writers never overwrite each other's parts.
        write_parquet(table, part)
        self._next_part += 1
        self._done.update(k for k, m in zip(keys, keep) if m)
        return int(keep.sum())

    def finalize(self, expected_rows: int | None = None) -> EmbeddingSet:
        """Mark the set complete (if every expected row is in) and build its LanceDB table; then
        release the lock (also when it raises)."""
        try:
            rows = sum(part_rows(p) for p in self.eset.parts)
            self._done = self.fs.stored_keys(self.eset)  # re-read: a part may have been copied in
            n = len(self._done)
            if rows != n:
                raise self.fs.duplicates_error(self.eset, rows, n)
            if expected_rows is not None and n < expected_rows:
                raise StoreError(f"set {self.eset.name}: {n} of {expected_rows} rows stored; run the job again to resume")
            self.fs.build_lance(self.eset)
            write_json({"rows": n, "finished": time.time()}, self.eset.complete_path)
            migrations.upgrade(PatchParts(self.fs.root))
            return self.fs.get(self.eset.recipe_id)
        finally:
            self.close()


class FeatureStore:
    """Read and write embedding sets under ``<store>/embeddings``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "embeddings"
        self.lance_dir = self.root / "lance"

    # -- discovery -------------------------------------------------------------------------
    def sets(self) -> list[EmbeddingSet]:
        """Every set folder with a ``recipe.json`` (``DamagedStoreError`` when one cannot be read)."""
        out = []
        if not self.dir.is_dir():
            return out
        for d in sorted(self.dir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "recipe.json").is_file():
                out.append(self._set_of(d))
        return out

    def _set_of(self, d: Path) -> EmbeddingSet:
        info = parse_recipe_json(d)
        return EmbeddingSet(path=d, recipe_id=info["recipe_id"], name=info["name"], outputs=info["outputs"],
                            provenance=info, complete=(d / "COMPLETE").is_file())

    def lock(self, recipe_id: str, name: str | None = None) -> SetLock:
        """The write lock of one set (not taken yet)."""
        return set_lock(self.root, recipe_id, name)

    def duplicates_error(self, eset: EmbeddingSet, rows: int, keys: int) -> DamagedStoreError:
        return DamagedStoreError(
            f"{eset.path}: set {eset.name} has {rows} rows but {keys} distinct (patch_id, view) keys: two jobs "
            "wrote it at once or a part was copied in. Run `mitoprobe store repair --yes` to quarantine the "
            "duplicate parts")

    def get(self, recipe_id: str) -> EmbeddingSet:
        for s in self.sets():
            if s.recipe_id == recipe_id:
                return s
        raise StoreError(f"no embedding set with recipe id {recipe_id}; run `mitoprobe embed` first")

    def resolve(self, name: str, recipe_id: str, allow_stale: bool = False) -> EmbeddingSet:
        """The set of recipe ``name`` made by ``recipe_id`` (the id the recipe has *now*, from the
        embedder's registry). A set made by another id is stale and refused, unless ``allow_stale``,
        which takes the newest such set with a loud warning. There is no "newest set" default: the
        caller must know the current id."""
        if not recipe_id:
            raise StoreError(f"reading {name!r} needs its current recipe id (embedder.recipe_id_of); "
                             "refusing to guess which stored set is meant")
        named = [s for s in self.sets() if s.name == name]
        for s in named:
            if s.recipe_id == recipe_id:
                return s
        if not named:
            raise StoreError(f"no embeddings stored for {name!r}; run `mitoprobe embed --model {name}` first")
        if not allow_stale:
            ids = ", ".join(s.recipe_id for s in named)
            raise StaleFeaturesError(
                f"STALE FEATURES: embeddings stored for {name!r} were made by recipe id(s) {ids}, "
                f"but the current recipe id is {recipe_id} (model, weights, transform or library "
                f"versions changed). Re-run `mitoprobe embed --model {name}`, or pass "
                "--allow-stale to use the old vectors anyway.")
        newest = max(named, key=lambda s: s.provenance.get("created", 0))
        log.warning("USING STALE FEATURES for %s: stored %s, current %s", name, newest.recipe_id, recipe_id)
        return newest

    # -- writing ---------------------------------------------------------------------------
    def writer(self, recipe_id: str, name: str, outputs: dict[str, int], provenance: dict) -> EmbeddingWriter:
        """Open (or resume) the set for ``recipe_id``; provenance must match what is stored.

        Takes the set's lock first (:class:`StoreLockedError` when another live process holds it);
        the writer keeps it until ``finalize``/``close`` (use ``with fs.writer(...) as w:``)."""
        path = self.dir / recipe_id
        meta = path / "recipe.json"
        lock = self.lock(recipe_id, name).acquire()
        try:
            if meta.is_file():
                stored = parse_recipe_json(path)
                if stored["outputs"] != {k: int(v) for k, v in outputs.items()} or stored["name"] != name:
                    raise StoreError(f"{meta}: stored set disagrees with this recipe (name/outputs); "
                                     "the recipe id should have changed: refusing to mix vectors")
            else:
                info = dict(provenance, recipe_id=recipe_id, name=name,
                            outputs={k: int(v) for k, v in outputs.items()}, created=time.time())
                created = make_dirs(path)
                try:
                    write_json(info, meta)
                except BaseException:
                    remove_dirs(created)
                    raise
            return EmbeddingWriter(self, self._set_of(path), lock)
        except BaseException:
            lock.release()
            raise

    # -- reading ---------------------------------------------------------------------------
    def stored_keys(self, eset: EmbeddingSet) -> set[tuple[str, str]]:
        """(patch_id, view) keys in the set's parts: read-only and lock-free (a job uses it to know,
        before writing anything, whether there is work to do)."""
        keys: set[tuple[str, str]] = set()
        for part in eset.parts:
            with read_guard(part):
                t = pq.ParquetFile(part).read(columns=list(KEY_COLUMNS))
            keys.update(zip(t["patch_id"].to_pylist(), t["view"].to_pylist()))
        return keys

    def read_table(self, eset: EmbeddingSet, columns: Iterable[str] | None = None) -> pa.Table:
        """The set's rows (``columns`` only), part by part (each part's damage named). A part is opened as one
        file, not as a dataset (``pq.read_table``): half the time for a set of ~200 parts of 1,024 rows."""
        parts = eset.parts
        if not parts:
            raise StoreError(f"set {eset.name} ({eset.recipe_id}) has no vectors yet")
        tables = []
        for p in parts:
            with read_guard(p):
                tables.append(pq.ParquetFile(p).read(columns=list(columns) if columns else None))
        with read_guard(eset.path, "has parts that disagree on the schema"):
            return pa.concat_tables(tables)

    def require_complete(self, eset: EmbeddingSet) -> int:
        """The set's row count when it is finished and whole; a one-line error saying what to do otherwise."""
        rows = read_complete(eset)
        holder = self.lock(eset.recipe_id, eset.name).held_elsewhere()
        if holder is not None:
            raise StoreError(f"set {eset.name} ({eset.path}) is being written by {describe(holder)}; "
                             "wait for that job to finish")
        if rows is None:
            raise StoreError(f"set {eset.name} ({eset.path}) is incomplete: it has no COMPLETE record (an "
                             f"interrupted `mitoprobe embed`, or a deleted record). Run `mitoprobe embed --model "
                             f"{eset.name}` to resume it")
        stored = sum(part_rows(p) for p in eset.parts)
        if stored != rows:
            raise DamagedStoreError(f"{eset.path}: set {eset.name} has {stored} rows but its COMPLETE record says "
                                    f"{rows} (a part was added or lost after it finished); {CHECK_HINT}")
        return rows

    @releasing
    def read(self, name: str, recipe_id: str, outputs: Sequence[str] | None = None,
             views: Sequence[str] | None = None, allow_stale: bool = False,
             require_complete: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
        """Keys frame (patch_id, view) and the matrix of the chosen outputs concatenated.

        ``outputs=None`` takes every output the set has (e.g. CLS ⊕ patch-mean).
        ``require_complete`` (the default, for probing) refuses a set without a matching ``COMPLETE``
        record or that a live job is writing; duplicate keys are always refused.
        """
        eset = self.resolve(name, recipe_id, allow_stale)
        outs = list(outputs) if outputs else list(eset.outputs)
        unknown = [o for o in outs if o not in eset.outputs]
        if unknown:
            raise StoreError(f"set {name} has outputs {list(eset.outputs)}, not {unknown}")
        if require_complete:
            self.require_complete(eset)
        t = self.read_table(eset, KEY_COLUMNS)  # the keys first: the vectors are streamed into X below
        n_keys = distinct_count(t, KEY_COLUMNS)  # by sorting, in Arrow: no pandas copy of the keys
        if n_keys != t.num_rows:
            raise self.duplicates_error(eset, t.num_rows, n_keys)
        mask = None
        if views is not None:
            mask = pc.is_in(t["view"], value_set=pa.array(list(views), t.schema.field("view").type))
            if pc.sum(mask).as_py() == t.num_rows:  # every row kept: no mask, no copies
                mask = None
            else:
                t = t.filter(mask)
                mask = mask.to_numpy(zero_copy_only=False)
        keys = t.to_pandas()
        del t
        return keys, self._stream_vectors(eset, outs, mask, len(keys))

    def _stream_vectors(self, eset: EmbeddingSet, outs: list[str], mask: np.ndarray | None, rows: int) -> np.ndarray:
        """The outputs ``outs`` side by side (float32) of the rows ``mask`` keeps (None: all), copied batch by
        batch into one array: the set is never held twice (an Arrow table and its NumPy copy). 352 MiB of
        1,536-d vectors: peak RSS 1,168 -> ~600 MiB (docs/benchmarks.md, "Cohort scale, round 3")."""
        dims = [eset.outputs[o] for o in outs]
        X = np.empty((rows, sum(dims)), dtype=np.float32)
        at = seen = 0
        expected = rows if mask is None else len(mask)

        def changed(vector_rows: int) -> DamagedStoreError:
            return DamagedStoreError(f"{eset.path}: set {eset.name}'s parts changed while read ({vector_rows} vector "
                                     f"rows or more, {expected} keys); {CHECK_HINT}")

        for part in eset.parts:
            with read_guard(part):
                # unbuffered, in small batches: Arrow holds ~1 MiB of the file and one batch, not a row group
                stream = pq.ParquetFile(part, pre_buffer=False, buffer_size=1 << 20)
                for batch in stream.iter_batches(batch_size=2048, columns=outs, use_threads=False):
                    if seen + batch.num_rows > expected:
                        raise changed(seen + batch.num_rows)
                    keep = slice(None) if mask is None else mask[seen:seen + batch.num_rows]
                    seen += batch.num_rows
                    n = batch.num_rows if mask is None else int(keep.sum())
                    col = 0
                    for o, d in zip(outs, dims):
                        X[at:at + n, col:col + d] = batch[o].flatten().to_numpy().reshape(-1, d)[keep]
                        col += d
                    at += n
        if at != rows or seen != expected:
            raise changed(seen)
        return X

    def vectors(self, eset: EmbeddingSet, patch_ids: Sequence[str], output: str, view: str = "none") -> np.ndarray:
        """Raw vectors of ``output`` for ``patch_ids`` (one view), in their order: only their rows are
        kept (a filter per part), so a few queries never hold the whole set. ``StoreError`` naming the
        first patch the set lacks."""
        ids = [str(p) for p in patch_ids]
        want = pc.field("patch_id").isin(pa.array(list(dict.fromkeys(ids)), pa.string())) & (pc.field("view") == view)
        tables = []
        for p in eset.parts:
            with read_guard(p):
                tables.append(pq.read_table(p, columns=["patch_id", output], filters=want))
        t = pa.concat_tables(tables) if tables else pa.table({"patch_id": pa.array([], pa.string())})
        row = {pid: i for i, pid in enumerate(t["patch_id"].to_pylist())}
        if len(row) != t.num_rows:
            raise self.duplicates_error(eset, t.num_rows, len(row))
        missing = [p for p in ids if p not in row]
        if missing:
            raise StoreError(f"set {eset.name} lacks {len(missing)} of the {len(ids)} patches asked for (e.g. "
                             f"{missing[0]}, view {view}); run `mitoprobe embed --model {eset.name}` to embed them")
        X = t[output].combine_chunks().flatten().to_numpy().reshape(t.num_rows, eset.outputs[output])
        return X[[row[p] for p in ids]]

    # -- LanceDB ---------------------------------------------------------------------------
    def _lance(self, create: bool = True):
        os.environ.setdefault("LANCEDB_LOG", "error")  # not "No existing dataset ... will be created"
        import lancedb

        if create:
            make_dirs(self.lance_dir)
        return lancedb.connect(str(self.lance_dir))

    def lance_path(self, recipe_id: str) -> Path:
        return self.lance_dir / f"{recipe_id}.lance"

    def search_stats_path(self, eset: EmbeddingSet) -> Path:
        return eset.path / SEARCH_STATS_FILE

    def compute_search_stats(self, eset: EmbeddingSet, table: pa.Table | None = None) -> dict:
        """Per output, the mean and std per dimension of the set's vectors of the AMi-Br *train*
        patches (the patches table: dataset == "AMi-Br" and split == "train"; the ``none`` view
        when the set has it, else every view), the rows that fit the probes: test and hold-out
        patches never move the statistics. When the store holds fewer than 2 such rows (no
        patches, or a set of other patches), every row of the set is used and the record
        says so (``basis`` "all rows", ``fallback``). A zero std is stored as 1 (that dimension is
        only centred). Deterministic (no timestamp): a rebuild from the same rows writes the same bytes.
        ``DamagedStoreError`` when the patches table cannot be read."""
        table = table if table is not None else self.read_table(eset)
        pids = np.asarray(table["patch_id"].to_pylist(), dtype=object)
        views = np.asarray(table["view"].to_pylist(), dtype=object)
        view_mask = views == "none" if (views == "none").any() else np.ones(len(views), dtype=bool)
        used_views = sorted(set(views[view_mask].tolist()))
        patch_parts = PatchParts(self.root)
        fallback = None
        if patch_parts.exists():
            meta = patch_parts.read(["patch_id", "dataset", "split"]).to_pandas()
            train = set(meta.loc[(meta["dataset"] == STATS_DATASET) & (meta["split"] == STATS_SPLIT), "patch_id"])
            mask = view_mask & np.fromiter((p in train for p in pids), dtype=bool, count=len(pids))
            if mask.sum() < 2:
                fallback = f"{int(mask.sum())} of the set's rows are {STATS_DATASET} {STATS_SPLIT} patches"
        else:
            fallback = "the store has no patches"
        if fallback is not None:
            mask = view_mask
            log.warning("set %s: search statistics from all %d rows (%s)", eset.name, int(mask.sum()), fallback)
        idx = np.flatnonzero(mask)
        outputs = {}
        for out, dim in eset.outputs.items():
            X = table[out].combine_chunks().flatten().to_numpy().reshape(table.num_rows, dim)[idx]
            X = X.astype(np.float64)
            mean = X.mean(axis=0) if len(X) else np.zeros(dim)
            std = X.std(axis=0) if len(X) else np.ones(dim)
            zero = ~(std > 0)
            std[zero] = 1.0
            outputs[out] = {"mean": mean.tolist(), "std": std.tolist(), "zero_std_dims": int(zero.sum())}
        return {
            "version": SEARCH_STATS_VERSION,
            "recipe_id": eset.recipe_id,
            "basis": "all rows" if fallback else f"{STATS_DATASET} {STATS_SPLIT}",
            "fallback": fallback,
            "rows": int(len(idx)),
            "patches": int(len(set(pids[idx].tolist()))),
            "views": used_views,
            "table_rows": int(table.num_rows),
            "outputs": outputs,
        }

    def search_stats(self, eset: EmbeddingSet) -> dict:
        """The set's ``search_stats.json`` (written by ``build_lance``), checked; a
        ``DamagedStoreError`` pointing at ``store repair`` when it is missing or unreadable."""
        p = self.search_stats_path(eset)
        if not p.is_file():
            raise DamagedStoreError(f"{p}: set {eset.name} has no search statistics (its LanceDB table was built "
                                    "by an older mitoprobe); run `mitoprobe store repair --yes` to rebuild it")
        with read_guard(p):
            info = json.loads(p.read_text())
        with read_guard(p, "is not a valid search-statistics record", errors=(ValueError, TypeError, KeyError,
                                                                               AttributeError)):
            if not isinstance(info, dict) or info.get("version") != SEARCH_STATS_VERSION:
                raise ValueError(f"version is {info.get('version') if isinstance(info, dict) else None!r}")
            for out, dim in eset.outputs.items():
                o = info["outputs"][out]
                if len(o["mean"]) != dim or len(o["std"]) != dim or not all(v > 0 for v in o["std"]):
                    raise ValueError(f"output {out}: mean/std do not have {dim} dimensions with std > 0")
        return info

    def standardize(self, eset: EmbeddingSet, output: str, X: np.ndarray, stats: dict | None = None) -> np.ndarray:
        """Raw vectors of ``output`` (one row or a matrix) z-scored exactly like the set's search column."""
        o = (stats or self.search_stats(eset))["outputs"][output]
        return standardize(X, o["mean"], o["std"])

    def build_lance(self, eset: EmbeddingSet) -> None:
        """(Re)build the set's LanceDB table from its Parquet parts (Lance writes are versioned,
        so an interrupted overwrite leaves the previous version readable).

        Besides each raw output column the table holds ``<output>__z``: the vectors z-scored per
        dimension with the AMi-Br-train statistics (``compute_search_stats``), written first to
        ``search_stats.json`` (atomically) so a query can be standardised the same way. Raw cosine
        is meaningless when one dimension dwarfs the others (``handcrafted``: one feature averages
        |x| ~ 689 against a median of 0.43). The standardised vectors are extra *columns* of the one
        table rather than a second table: one versioned overwrite keeps raw and standardised rows
        identical in set and order, the integrity check's row count and sample cover both, and
        repair has one thing to rebuild. The Parquet parts (the canonical vectors) are never touched.
        Above ``ANN_MIN_ROWS`` the ANN index is built on the ``__z`` columns, the ones searched by
        default; raw search is then an exact scan."""
        table = self.read_table(eset)
        clash = [z_column(o) for o in eset.outputs if z_column(o) in table.column_names]
        if clash:
            raise StoreError(f"set {eset.name}: output names {clash} collide with the search columns")
        stats = self.compute_search_stats(eset, table)
        lance_table = table
        for out, dim in eset.outputs.items():
            X = table[out].combine_chunks().flatten().to_numpy().reshape(table.num_rows, dim)
            Z = self.standardize(eset, out, X, stats)
            lance_table = lance_table.append_column(
                z_column(out), pa.FixedSizeListArray.from_arrays(pa.array(Z.reshape(-1), pa.float32()), dim))
        write_json(stats, self.search_stats_path(eset))
        db = self._lance()
        with env_errors(self.lance_path(eset.recipe_id)):
            tbl = db.create_table(eset.recipe_id, data=lance_table, mode="overwrite")
            if table.num_rows >= ANN_MIN_ROWS:
                for out, dim in eset.outputs.items():
                    create_ann_index(tbl, z_column(out), dim, table.num_rows)

    def lance_table(self, eset: EmbeddingSet):
        where = self.lance_path(eset.recipe_id)
        if not where.is_dir():
            raise DamagedStoreError(f"{where}: the LanceDB table of set {eset.name} is missing; run "
                                    "`mitoprobe store repair --yes` to rebuild it from the Parquet parts")
        with read_guard(where, "cannot be opened as a LanceDB table"):
            try:
                return self._lance(create=False).open_table(eset.recipe_id)
            except ValueError as exc:  # "Table ... was not found": a folder without a valid manifest
                raise damaged(where, exc, "is not a readable LanceDB table (run `mitoprobe store repair "
                              "--yes` to rebuild it)") from exc

    def check_table_rows(self, eset: EmbeddingSet, n: int) -> None:
        """Refuse a LanceDB table of ``n`` rows when the set's ``COMPLETE`` record says otherwise: a
        table that lost rows (or gained some) would answer every search silently over other patches
        than the set holds. The one check every reader runs (``searcher``: ``search``, ``mitoprobe
        search`` through ``classifiers.neighbours``, the dashboard's similarity page); cheap (a row
        count and a small JSON file). A set without ``COMPLETE`` (unfinished) or that a live job is
        writing is not judged."""
        rows = read_complete(eset)
        if rows is None or rows == n or self.lock(eset.recipe_id, eset.name).held_elsewhere() is not None:
            return
        where = self.lance_path(eset.recipe_id)
        err = DamagedStoreError(
            f"{where}: the LanceDB table of set {eset.name} has {n} rows but its COMPLETE record says {rows} "
            "(rows were lost or added after it was built, so a search would answer over other patches than "
            "the set holds); run `mitoprobe store repair --yes` to rebuild it from the Parquet parts")
        err.path, err.reason = where, f"has {n} rows, its COMPLETE record {rows}"
        raise err

    def search(self, eset: EmbeddingSet, query: np.ndarray, output: str | None = None, k: int = 10,
               view: str = "none", standardized: bool = True, among: Sequence[str] | None = None) -> pd.DataFrame:
        """The k nearest stored vectors (cosine distance) to the raw vector ``query`` in one output.

        ``standardized`` (the default) searches the ``<output>__z`` column: the query is z-scored
        with the set's AMi-Br-train statistics (``search_stats.json``) and compared with the stored
        vectors z-scored the same way; ``standardized=False`` compares raw vectors. A table built
        before the standardised columns existed is refused (``DamagedStoreError``: run
        ``mitoprobe store repair --yes``); a reader never rebuilds it (that needs the set's lock). A
        table whose row count disagrees with the set's ``COMPLETE`` record is refused too (``check_table_rows``).
        Exact (flat) search below ``ANN_MIN_ROWS`` rows or when the column has no index; the ANN
        index with the parameters of ``ann_params`` above it. ``among``: only these patch ids may be
        returned (a prefilter, so k hits come back whenever k such patches exist).
        Many queries: ``searcher`` opens the table and reads the statistics once.
        """
        return self.searcher(eset, output, standardized)(query, k=k, view=view, among=among)

    def searcher(self, eset: EmbeddingSet, output: str | None = None, standardized: bool = True) -> "Searcher":
        """An open search over one output of ``eset`` (see ``search``), for many queries."""
        output = output or next(iter(eset.outputs))
        if output not in eset.outputs:
            raise StoreError(f"set {eset.name} has outputs {list(eset.outputs)}, not {output!r}")
        tbl = self.lance_table(eset)
        where = self.lance_path(eset.recipe_id)
        column = output
        stats = None
        if standardized:
            column = z_column(output)
            with lance_guard(where, "cannot be read"):
                names = tbl.schema.names
            if column not in names:
                raise DamagedStoreError(
                    f"{where}: the LanceDB table of set {eset.name} has no standardised search column {column!r} "
                    "(built by an older mitoprobe); run `mitoprobe store repair --yes` to rebuild it from the "
                    "Parquet parts (or search the raw vectors with standardized=False)")
            stats = self.search_stats(eset)
        with lance_guard(where, "cannot be searched"):
            n = tbl.count_rows()
            indexed = any(column in ix.columns for ix in tbl.list_indices())
        self.check_table_rows(eset, n)
        params = ann_params(n, eset.outputs[output]) if indexed and n >= ANN_MIN_ROWS else None
        return Searcher(self, eset, output, column, tbl, where, stats, params)


class Searcher:
    """One output of one set, opened for search: ``searcher(query, k, view, among) -> DataFrame``."""

    def __init__(self, fs: FeatureStore, eset: EmbeddingSet, output: str, column: str, tbl, where: Path,
                 stats: dict | None, params: "AnnParams | None"):
        self.fs, self.eset, self.output, self.column = fs, eset, output, column
        self._tbl, self._where, self._stats, self._params = tbl, where, stats, params

    def __call__(self, query: np.ndarray, k: int = 10, view: str = "none",
                 among: Sequence[str] | None = None) -> pd.DataFrame:
        return self._run(np.asarray(query, dtype=np.float32), k, _search_filter(view, among)).drop(
            columns=["query_index"], errors="ignore")

    def batch(self, queries: np.ndarray, k: int = 10, view: str = "none") -> pd.DataFrame:
        """The k nearest rows of each of many raw query vectors in one LanceDB call (a ``query``
        column: the row of ``queries``). No patch-id prefilter: a long ``IN`` list costs ~0.2 s per
        query, so callers that need a subset over-fetch here and fall back to ``__call__(among=)``."""
        df = self._run(np.atleast_2d(np.asarray(queries, dtype=np.float32)), k, _search_filter(view, None))
        if "query_index" not in df:  # one query: LanceDB leaves the column out
            df["query_index"] = 0
        return df.rename(columns={"query_index": "query"})

    def _run(self, query: np.ndarray, k: int, where: str) -> pd.DataFrame:
        return self._arrow(query, k, where).to_pandas().rename(columns={"_distance": "distance"})

    def _arrow(self, query: np.ndarray, k: int, where: str | None) -> pa.Table:
        """One LanceDB search (one vector or a matrix of them) behind the store's guard (``lance_guard``)."""
        if self._stats is not None:
            query = self.fs.standardize(self.eset, self.output, query, self._stats)
        with lance_guard(self._where, "cannot be searched"):
            q = self._tbl.search(query, vector_column_name=self.column).distance_type("cosine")
            if where is not None:
                q = q.where(where, prefilter=True)
            q = q.select([*KEY_COLUMNS, "_distance"]).limit(k)
            return apply_search_params(q, self._params, k).to_arrow()

    def nearest(self, queries: np.ndarray, k: int, candidates: Sequence[str] | None = None,
                query_ids: Sequence[str] | None = None, same: Sequence[tuple[Sequence, pd.Series]] = (),
                view: str = "none", batch: int = 256) -> pd.DataFrame:
        """Each raw query vector's k nearest allowed rows, many queries per LanceDB call: a frame of
        ``query`` (row of ``queries``), ``rank`` (1..k), ``patch_id``, ``distance``.

        Allowed: a patch id in ``candidates`` (None: any), not the query's own id (``query_ids``), and for
        each ``(query_keys, key_of)`` in ``same`` not sharing the query's key (``key_of``: patch id -> key,
        e.g. its slide; a missing key matches nothing). Batched searches over-fetch (``OVERFETCH_*``: first
        2k rows plus the candidates a query's keys exclude, over the share of rows that are candidates; then
        10 times more), filtered with array
        operations; a query still short of k is searched alone with its allowed ids as a prefilter,
        which is exact: the answer never depends on the shortcut."""
        Q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        rows = self._count()
        with lance_guard(self._where, "cannot be searched"):  # a set of one view: no prefilter (~4 ms a query)
            only = self._tbl.count_rows(_search_filter(view, None)) == rows
        batch_filter = None if only else _search_filter(view, None)
        cand = None if candidates is None else pa.array(list(dict.fromkeys(map(str, candidates))), pa.string())
        share = 1.0 if cand is None else max(len(cand), 1) / max(rows, 1)
        keys = [_Keys(qk, key_of) for qk, key_of in same]
        qids = None if query_ids is None else np.asarray(list(map(str, query_ids)), dtype=object)
        shared = np.array([key.shared(cand) for key in keys]).reshape(len(keys), len(Q))
        own = np.zeros(len(Q), np.int64) if qids is None else (
            np.isin(qids, cand.to_numpy(zero_copy_only=False)) if cand is not None else np.ones(len(Q))).astype(np.int64)
        excluded = own + shared.sum(axis=0)  # candidates a query cannot get, at most
        allowed = (rows if cand is None else len(cand)) - np.maximum(own, shared.max(axis=0, initial=0))  # at most
        want = np.minimum(k, allowed)  # fewer hits than this: more may be allowed
        found: list[tuple[np.ndarray, np.ndarray]] = [_NO_HITS] * len(Q)  # (patch ids, distances), nearest first
        todo = np.flatnonzero(want > 0)
        for round_ in range(OVERFETCH_ROUNDS):
            short = []
            for a in range(0, len(todo), batch):
                chunk = todo[a:a + batch]
                first = int(np.ceil((OVERFETCH_FIRST * want[chunk].max() + excluded[chunk].max()) / share))
                fetch = min(rows, max(1, first) * OVERFETCH_GROWTH ** round_)
                pids, dist, bounds = self._allowed(self._arrow(Q[chunk], fetch, batch_filter), len(chunk),
                                                   chunk, k, cand, qids, keys)
                for j, i in enumerate(chunk):
                    found[i] = (pids[bounds[j]:bounds[j + 1]], dist[bounds[j]:bounds[j + 1]])
                    if bounds[j + 1] - bounds[j] < want[i] and fetch < rows:  # every row fetched: all allowed are in
                        short.append(i)
            todo = np.asarray(short, dtype=int)
        for i in todo:  # the exact path: a prefilter of the query's allowed ids
            among = self._allowed_ids(int(i), cand, qids, keys)
            if len(among) > len(found[i][0]):  # else every allowed patch is among the hits already
                hit = self._arrow(Q[i], k, _search_filter(view, among))
                found[i] = (hit["patch_id"].to_numpy(zero_copy_only=False), hit["_distance"].to_numpy())
        n = np.array([len(f[0]) for f in found], dtype=np.int64)
        return pd.DataFrame({
            "query": np.repeat(np.arange(len(Q)), n),
            "rank": np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + 1,
            "patch_id": np.concatenate([f[0] for f in found]) if len(Q) else np.array([], dtype=object),
            "distance": np.concatenate([f[1] for f in found]) if len(Q) else np.array([], dtype=np.float32)})

    def stored(self, patch_ids: Sequence[str], view: str = "none") -> dict[str, np.ndarray]:
        """Raw vectors of ``output`` by patch id, read from the table (one filtered scan of its key
        columns, never the set's parts); ids the set lacks are left out."""
        ids = list(dict.fromkeys(map(str, patch_ids)))
        with lance_guard(self._where, "cannot be read"):
            t = (self._tbl.search().where(_search_filter(view, ids)).select(["patch_id", self.output])
                 .limit(max(len(ids), 1)).to_arrow())
        X = t[self.output].combine_chunks().flatten().to_numpy().reshape(t.num_rows, self.eset.outputs[self.output])
        return dict(zip(t["patch_id"].to_pylist(), X))

    def sample(self, n: int, view: str = "none", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(patch ids, searched vectors: standardised unless ``standardized=False``) of ``n`` rows of one
        view drawn at random (seeded), or of every such row when there are no more: reads only the
        rows drawn (``take_offsets``), whatever the table's size."""
        with lance_guard(self._where, "cannot be read"):
            rows, in_view = self._tbl.count_rows(), self._tbl.count_rows(_search_filter(view, None))
            cols = ["patch_id", "view", self.column]
            if in_view <= n:
                t = self._tbl.search().where(_search_filter(view, None)).select(cols).limit(max(in_view, 1)).to_arrow()
            else:  # offsets over every view, enough of them to hold ~n rows of this one
                take = min(rows, int(np.ceil(n * rows / in_view * 1.1)))
                offsets = np.sort(np.random.default_rng(seed).choice(rows, size=take, replace=False))
                t = self._tbl.take_offsets(offsets.tolist()).select(cols).to_arrow()
        t = t.filter(pc.equal(t["view"], view)).slice(0, n)
        dim = self.eset.outputs[self.output]
        return (np.asarray(t["patch_id"].to_pylist(), dtype=object),
                t[self.column].combine_chunks().flatten().to_numpy().reshape(t.num_rows, dim))

    def _count(self) -> int:
        with lance_guard(self._where, "cannot be searched"):
            return self._tbl.count_rows()

    @staticmethod
    def _allowed(t: pa.Table, n: int, chunk: np.ndarray, k: int, cand, qids, keys
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first k allowed hits of each of the ``n`` queries of one batched search (``nearest``), by
        distance: (patch ids, distances, bounds), query j's hits at ``bounds[j]:bounds[j + 1]``."""
        qi = t["query_index"].to_numpy() if "query_index" in t.column_names else np.zeros(t.num_rows, dtype=np.int64)
        dist = t["_distance"].to_numpy()
        order = np.lexsort((dist, qi))
        pid = t["patch_id"].take(pa.array(order))
        qi, dist = qi[order], dist[order]
        ok = np.ones(len(qi), dtype=bool) if cand is None else \
            pc.is_in(pid, value_set=cand).to_numpy(zero_copy_only=False)
        pids = pid.to_numpy(zero_copy_only=False)
        if qids is not None:
            ok &= pids != qids[chunk[qi]]
        for key in keys:
            ok &= ~key.same(pids, chunk[qi])
        qi, pids, dist = qi[ok], pids[ok], dist[ok]
        start = np.searchsorted(qi, np.arange(n), side="left")
        keep = np.arange(len(qi)) - start[qi] < k
        qi, pids, dist = qi[keep], pids[keep], dist[keep]
        return pids, dist, np.searchsorted(qi, np.arange(n + 1), side="left")

    def _allowed_ids(self, i: int, cand, qids, keys) -> list[str]:
        """Every patch id query ``i`` may get (its exact search's prefilter)."""
        ids = np.asarray(cand.to_pylist() if cand is not None else self._all_ids(), dtype=object)
        ok = np.ones(len(ids), dtype=bool)
        if qids is not None:
            ok &= ids != qids[i]
        for key in keys:
            ok &= ~key.same(ids, np.full(len(ids), i))
        return ids[ok].tolist()

    def _all_ids(self) -> list[str]:
        with lance_guard(self._where, "cannot be searched"):
            t = self._tbl.search().select(["patch_id"]).limit(self._count()).to_arrow()
        return sorted(set(t["patch_id"].to_pylist()))


OVERFETCH_ROUNDS = 2  # batched fetch rounds of ``Searcher.nearest`` before its exact per-query fallback
OVERFETCH_FIRST = 2  # the first round fetches this many times k (plus what a query excludes), over the candidates' share
OVERFETCH_GROWTH = 10  # each round fetches this many times more rows than the one before
_NO_HITS = (np.array([], dtype=object), np.array([], dtype=np.float32))


class _Keys:
    """A "not the query's own X" rule of ``Searcher.nearest``: each query's key and each patch's, as codes."""

    def __init__(self, query_keys: Sequence, key_of: pd.Series):
        codes, uniques = pd.factorize(pd.concat([pd.Series(list(query_keys), dtype=object),
                                                 pd.Series(key_of.to_numpy(), dtype=object)], ignore_index=True))
        nq = len(query_keys)
        self.query = codes[:nq]  # -1: the query has no key (excludes nothing)
        self.of = pd.Series(codes[nq:], index=key_of.index.astype(str))

    def shared(self, cand: pa.Array | None) -> np.ndarray:
        """For each query, how many candidates (every patch when ``cand`` is None) share its key."""
        codes = self.of if cand is None else self.of[self.of.index.isin(cand.to_pylist())]
        counts = codes[codes >= 0].value_counts()
        return counts.reindex(self.query).fillna(0).to_numpy(dtype=np.int64)

    def same(self, pids: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """Whether each hit ``pids[j]`` shares the key of its query ``queries[j]``."""
        if not len(pids):
            return np.zeros(0, dtype=bool)
        code = self.of.reindex(pids).fillna(-1).to_numpy(dtype=np.int64)
        q = self.query[queries]
        return (q >= 0) & (code == q)


def _sql_str(v: str) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _search_filter(view: str, among: Sequence[str] | None) -> str:
    """The LanceDB prefilter: one view, and optionally a set of patch ids."""
    where = f"view = {_sql_str(view)}"
    if among is not None:
        where += f" AND patch_id IN ({', '.join(_sql_str(p) for p in among) or 'NULL'})"
    return where


@dataclass(frozen=True)
class AnnParams:
    """How a large set is indexed and searched (chosen by ``benchmarks/search_latency.py``)."""

    index_type: str
    num_partitions: int
    nprobes: int
    refine_factor: int | None = None
    num_sub_vectors: int | None = None  # IVF_PQ
    m: int | None = None  # IVF_HNSW_SQ: graph degree
    ef_construction: int | None = None
    ef: int | None = None


def ann_params(n_rows: int, dim: int, index_type: str | None = None) -> AnnParams:
    """Index and search parameters for a set of ``n_rows`` vectors of dimension ``dim``."""
    index_type = (index_type or ANN_DEFAULT_INDEX).upper()
    if index_type == "IVF_HNSW_SQ":
        # A few large partitions, each one HNSW graph over 8-bit scalar-quantised vectors, all of
        # them probed: partitions only bound the build memory. At 1M x 1536-d on 2 cores this gave
        # p95 9.1 ms, recall@10 0.98 (benchmarks/search_latency.py); probing 2 of 4 gave 0.76, and
        # re-ranking with the float vectors (refine_factor) cost ~5 ms for +0.01 recall.
        parts = max(1, n_rows // 250_000)
        return AnnParams(index_type, num_partitions=parts, nprobes=parts, refine_factor=None,
                         m=16, ef_construction=100, ef=100)
    if index_type == "IVF_PQ":
        num_sub_vectors = next(s for s in (dim // 16, dim // 8, dim // 4, dim, 1) if s >= 1 and dim % s == 0)
        parts = max(1, int(np.sqrt(n_rows)))
        return AnnParams(index_type, num_partitions=parts, nprobes=max(1, parts // 32),
                         refine_factor=20, num_sub_vectors=num_sub_vectors)
    raise StoreError(f"unknown ANN index type {index_type!r}; use IVF_HNSW_SQ or IVF_PQ")


def create_ann_index(tbl, column: str, dim: int, n_rows: int, index_type: str | None = None) -> AnnParams:
    """Build the ANN index for one vector column of a LanceDB table (cosine distance)."""
    from lancedb.index import HnswSq, IvfPq

    p = ann_params(n_rows, dim, index_type)
    if p.index_type == "IVF_HNSW_SQ":
        config = HnswSq(distance_type="cosine", num_partitions=p.num_partitions, m=p.m,
                        ef_construction=p.ef_construction)
    else:
        config = IvfPq(distance_type="cosine", num_partitions=p.num_partitions, num_sub_vectors=p.num_sub_vectors)
    tbl.create_index(column, config=config, replace=True)
    return p


def apply_search_params(query, p: AnnParams | None, k: int = 0):
    """Set nprobes / refine / ef on a LanceDB vector query of ``k`` rows; ``None`` means exact (flat) search.

    HNSW's candidate list ``ef`` must hold at least the rows asked for (LanceDB refuses ``ef < k``: callers
    that over-fetch ask for more than the tuned 100), so it follows ``k`` upwards."""
    if p is None:
        return query.bypass_vector_index()
    query = query.nprobes(p.nprobes)
    if p.refine_factor:
        query = query.refine_factor(p.refine_factor)
    if p.ef:
        query = query.ef(max(p.ef, k))
    return query
