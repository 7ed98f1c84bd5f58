"""Embedding sets: Parquet parts (canonical) + a LanceDB table (similarity search).

Layout under ``<store>/embeddings/<recipe_id>/``::

    recipe.json          provenance: name, recipe id, recipe config, weights, library versions,
                         output names and dimensions
    part-*.parquet       patch_id, view, one fixed-size-list column per output (e.g. cls, mean)
    COMPLETE             written once every patch x view is in (carries the row count)

Parts are written atomically one chunk at a time, so a killed job loses at most the chunk in
flight and a resumed job appends only the missing (patch_id, view) keys: no loss, no duplicates.
The LanceDB table ``<store>/lance/<recipe_id>.lance`` is rebuilt from the parts on finalise.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import sweep_tmp, write_json, write_parquet
from .errors import StaleFeaturesError, StoreError
from .schema import KEY_COLUMNS, embedding_schema, validate

log = logging.getLogger(__name__)

ANN_MIN_ROWS = 50_000  # below this, exact (brute-force) search is both fast and exact
ANN_DEFAULT_INDEX = "IVF_HNSW_SQ"


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
    """Append chunks to one set; resumable. Obtain from ``FeatureStore.writer``."""

    def __init__(self, fs: "FeatureStore", eset: EmbeddingSet):
        self.fs = fs
        self.eset = eset
        sweep_tmp(eset.path)
        self._next_part = len(eset.parts)
        self._done = fs._stored_keys(eset)

    def done_keys(self) -> set[tuple[str, str]]:
        """(patch_id, view) pairs already stored under this recipe id."""
        return set(self._done)

    def write_chunk(self, patch_ids: Sequence[str], views: Sequence[str], vectors: dict[str, np.ndarray]) -> int:
        """Store one chunk atomically; keys already stored are dropped. Returns rows written."""
        if set(vectors) != set(self.eset.outputs):
            raise StoreError(f"set {self.eset.name}: got outputs {sorted(vectors)}, "
                             f"expected {sorted(self.eset.outputs)}")
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
        # A random suffix: two jobs writing the same set never overwrite each other's parts.
        write_parquet(table, part)
        self._next_part += 1
        self._done.update(k for k, m in zip(keys, keep) if m)
        return int(keep.sum())

    def finalize(self, expected_rows: int | None = None) -> EmbeddingSet:
        """Mark the set complete (if every expected row is in) and build its LanceDB table."""
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.eset.parts)
        self._done = self.fs._stored_keys(self.eset)  # re-read: another job may have added parts
        n = len(self._done)
        if rows != n:
            raise StoreError(f"set {self.eset.name} ({self.eset.path}): {rows} rows but {n} distinct (patch_id, view) "
                             "keys; two jobs wrote it at once. Delete the folder and run the job again")
        if expected_rows is not None and n < expected_rows:
            raise StoreError(f"set {self.eset.name}: {n} of {expected_rows} rows stored; run the job again to resume")
        self.fs.build_lance(self.eset)
        write_json({"rows": n, "finished": time.time()}, self.eset.path / "COMPLETE")
        return self.fs.get(self.eset.recipe_id)


class FeatureStore:
    """Read and write embedding sets under ``<store>/embeddings``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "embeddings"
        self.lance_dir = self.root / "lance"

    # -- discovery -------------------------------------------------------------------------
    def sets(self) -> list[EmbeddingSet]:
        out = []
        if not self.dir.is_dir():
            return out
        for d in sorted(self.dir.iterdir()):
            meta = d / "recipe.json"
            if d.is_dir() and meta.is_file():
                info = json.loads(meta.read_text())
                out.append(EmbeddingSet(path=d, recipe_id=info["recipe_id"], name=info["name"],
                                        outputs={k: int(v) for k, v in info["outputs"].items()},
                                        provenance=info, complete=(d / "COMPLETE").is_file()))
        return out

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
        """Open (or resume) the set for ``recipe_id``; provenance must match what is stored."""
        path = self.dir / recipe_id
        meta = path / "recipe.json"
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if stored["outputs"] != {k: int(v) for k, v in outputs.items()} or stored["name"] != name:
                raise StoreError(f"{meta}: stored set disagrees with this recipe (name/outputs); "
                                 "the recipe id should have changed: refusing to mix vectors")
        else:
            info = dict(provenance, recipe_id=recipe_id, name=name,
                        outputs={k: int(v) for k, v in outputs.items()}, created=time.time())
            path.mkdir(parents=True, exist_ok=True)
            write_json(info, meta)
        return EmbeddingWriter(self, self.get(recipe_id))

    # -- reading ---------------------------------------------------------------------------
    def _stored_keys(self, eset: EmbeddingSet) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for part in eset.parts:
            t = pq.read_table(part, columns=list(KEY_COLUMNS))
            keys.update(zip(t["patch_id"].to_pylist(), t["view"].to_pylist()))
        return keys

    def read_table(self, eset: EmbeddingSet, columns: Iterable[str] | None = None) -> pa.Table:
        parts = eset.parts
        if not parts:
            raise StoreError(f"set {eset.name} ({eset.recipe_id}) has no vectors yet")
        return pa.concat_tables(pq.read_table(p, columns=list(columns) if columns else None) for p in parts)

    def read(self, name: str, recipe_id: str, outputs: Sequence[str] | None = None,
             views: Sequence[str] | None = None, allow_stale: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
        """Keys frame (patch_id, view) and the matrix of the chosen outputs concatenated.

        ``outputs=None`` takes every output the set has (e.g. CLS ⊕ patch-mean).
        """
        eset = self.resolve(name, recipe_id, allow_stale)
        outs = list(outputs) if outputs else list(eset.outputs)
        unknown = [o for o in outs if o not in eset.outputs]
        if unknown:
            raise StoreError(f"set {name} has outputs {list(eset.outputs)}, not {unknown}")
        t = self.read_table(eset, list(KEY_COLUMNS) + outs)
        keys = t.select(list(KEY_COLUMNS)).to_pandas()
        mats = [t[o].combine_chunks().flatten().to_numpy().reshape(len(keys), eset.outputs[o]) for o in outs]
        X = np.concatenate(mats, axis=1) if len(mats) > 1 else mats[0]
        if views is not None:
            mask = keys["view"].isin(list(views)).to_numpy()
            keys, X = keys[mask].reset_index(drop=True), X[mask]
        return keys, X

    # -- LanceDB ---------------------------------------------------------------------------
    def _lance(self):
        os.environ.setdefault("LANCEDB_LOG", "error")  # not "No existing dataset ... will be created"
        import lancedb

        self.lance_dir.mkdir(parents=True, exist_ok=True)
        return lancedb.connect(str(self.lance_dir))

    def build_lance(self, eset: EmbeddingSet) -> None:
        """(Re)build the set's LanceDB table from its Parquet parts (Lance writes are versioned,
        so an interrupted overwrite leaves the previous version readable)."""
        db = self._lance()
        table = self.read_table(eset)
        tbl = db.create_table(eset.recipe_id, data=table, mode="overwrite")
        if table.num_rows >= ANN_MIN_ROWS:
            for out, dim in eset.outputs.items():
                create_ann_index(tbl, out, dim, table.num_rows)

    def lance_table(self, eset: EmbeddingSet):
        db = self._lance()
        try:
            return db.open_table(eset.recipe_id)
        except Exception as exc:
            raise StoreError(f"no LanceDB table for set {eset.name}; run `mitoprobe embed` again to build it") from exc

    def search(self, eset: EmbeddingSet, query: np.ndarray, output: str | None = None, k: int = 10,
               view: str = "none") -> pd.DataFrame:
        """The k nearest stored vectors (cosine distance) to ``query`` in one output column.

        Exact (flat) search below ``ANN_MIN_ROWS`` rows or when the column has no index; the ANN
        index with the parameters of ``ann_params`` above it.
        """
        output = output or next(iter(eset.outputs))
        if output not in eset.outputs:
            raise StoreError(f"set {eset.name} has outputs {list(eset.outputs)}, not {output!r}")
        tbl = self.lance_table(eset)
        n = tbl.count_rows()
        indexed = any(output in ix.columns for ix in tbl.list_indices())
        params = ann_params(n, eset.outputs[output]) if indexed and n >= ANN_MIN_ROWS else None
        q = (tbl.search(np.asarray(query, dtype=np.float32), vector_column_name=output)
             .distance_type("cosine").where(f"view = '{view.replace(chr(39), chr(39) * 2)}'", prefilter=True)
             .select([*KEY_COLUMNS, "_distance"]).limit(k))
        return apply_search_params(q, params).to_pandas().rename(columns={"_distance": "distance"})


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


def apply_search_params(query, p: AnnParams | None):
    """Set nprobes / refine / ef on a LanceDB vector query; ``None`` means exact (flat) search."""
    if p is None:
        return query.bypass_vector_index()
    query = query.nprobes(p.nprobes)
    if p.refine_factor:
        query = query.refine_factor(p.refine_factor)
    if p.ef:
        query = query.ef(p.ef)
    return query
