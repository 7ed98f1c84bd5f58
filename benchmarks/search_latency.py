"""Vector search at scale: build N synthetic 1,536-d vectors in LanceDB, index them the way the
store does (``store.features.create_ann_index``), then print p50/p95 query latency and recall@10
against exact search.

The vectors are clustered with a low intrinsic dimension, like foundation-model embeddings (uniform
noise in 1,536-d has no near neighbours worth finding): 2,000 centres of Zipf-like sizes, each
point = centre + 0.5 x a 32-d latent mapped into 1,536-d + small isotropic noise, L2-normalised (the
store searches by cosine); nearest-neighbour cosine similarity ~0.9, 10th ~0.83 at 100k. Queries are fresh draws from the same distribution. Vectors are generated and written in
chunks (never 6 GB in RAM) and the exact top-10 of every query is accumulated chunk by chunk.

The figures print under the machine's line (``benchmarks.machine.header``).

With ``--store PATH`` it times a store's own batch search instead (``Workspace.search``, in-process, the
process start left out): every patch of ``--dataset`` as a query against the labelled patches of
``--reference``, one call, per query = wall / queries (``mitoprobe search``'s path).

Example: python -m benchmarks.search_latency --n 1000000
         python -m benchmarks.search_latency --n 100000 --index IVF_PQ
         python -m benchmarks.search_latency --store /tmp/cost-curves/x10/store --dataset Added --reference Cohort
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from mitoprobe.store.features import ANN_DEFAULT_INDEX, ann_params, apply_search_params, create_ann_index

from .machine import header

K = 10


def make_generator(dim: int, n_clusters: int, latent_dim: int, spread: float, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    basis = rng.standard_normal((latent_dim, dim), dtype=np.float32) / np.sqrt(latent_dim)
    # Cluster sizes vary (Zipf-like), as real data sets do.
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    weights /= weights.sum()

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.choice(n_clusters, size=n, p=weights)
        x = centres[c].copy()
        x += spread * (rng.standard_normal((n, latent_dim), dtype=np.float32) @ basis)
        x += noise * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    return draw


def merge_topk(best_s, best_i, scores, offset):
    """Keep the K highest cosine similarities seen so far per query."""
    idx = np.argpartition(-scores, K, axis=1)[:, :K]
    s = np.take_along_axis(scores, idx, axis=1)
    all_s = np.concatenate([best_s, s], axis=1)
    all_i = np.concatenate([best_i, idx + offset], axis=1)
    keep = np.argsort(-all_s, axis=1)[:, :K]
    return np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_i, keep, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the table")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--latent-dim", type=int, default=32)
    ap.add_argument("--spread", type=float, default=0.5, help="within-cluster spread relative to the centres")
    ap.add_argument("--noise", type=float, default=0.1, help="isotropic noise (relative to the latent spread)")
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--index", default=ANN_DEFAULT_INDEX, help="IVF_HNSW_SQ or IVF_PQ")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mitoprobe-search-bench"))
    ap.add_argument("--reuse", action="store_true", help="reuse the table and index already in --dir")
    ap.add_argument("--nprobes", type=int, default=None)
    ap.add_argument("--refine-factor", type=int, default=None)
    ap.add_argument("--ef", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", type=Path, help="time Workspace.search on this store instead (see above)")
    ap.add_argument("--model", default="handcrafted")
    ap.add_argument("--dataset", default="Added", help="--store: the dataset whose patches are the queries")
    ap.add_argument("--reference", default="Cohort", help="--store: the dataset searched (labelled patches)")
    ap.add_argument("--k", type=int, default=K)
    args = ap.parse_args()
    if args.store is not None:
        store_search(args)
        return

    import lancedb

    draw = make_generator(args.dim, args.clusters, args.latent_dim, args.spread, args.noise, args.seed)
    qrng = np.random.default_rng(args.seed + 1)
    queries = draw(args.queries, qrng)
    gt_path = args.dir / f"truth-{args.n}.npy"
    if not args.reuse:
        shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    db = lancedb.connect(str(args.dir))
    schema = pa.schema([("id", pa.int64()), ("vec", pa.list_(pa.float32(), args.dim))])

    if args.reuse and gt_path.is_file():
        truth = np.load(gt_path)
        tbl = db.open_table("bench")
        t_write = t_index = float("nan")
    else:
        best_s = np.full((args.queries, K), -np.inf, dtype=np.float32)
        best_i = np.zeros((args.queries, K), dtype=np.int64)
        drng = np.random.default_rng(args.seed + 2)

        def batches():
            nonlocal best_s, best_i
            for start in range(0, args.n, args.chunk):
                m = min(args.chunk, args.n - start)
                x = draw(m, drng)
                best_s, best_i = merge_topk(best_s, best_i, queries @ x.T, start)
                vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim)
                yield pa.record_batch([pa.array(np.arange(start, start + m)), vec], schema=schema)
                print(f"\rwritten {start + m:,}/{args.n:,}", end="", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        tbl = db.create_table("bench", data=pa.RecordBatchReader.from_batches(schema, batches()), mode="overwrite")
        t_write = time.perf_counter() - t0
        truth = best_i
        np.save(gt_path, truth)
        print(f"\nwrote {args.n:,} x {args.dim} vectors in {t_write:.0f} s", file=sys.stderr)
        t0 = time.perf_counter()
        create_ann_index(tbl, "vec", args.dim, args.n, index_type=args.index)
        t_index = time.perf_counter() - t0

    params = ann_params(args.n, args.dim, args.index)
    overrides = {k: v for k, v in (("nprobes", args.nprobes), ("refine_factor", args.refine_factor),
                                   ("ef", args.ef)) if v is not None}
    params = params.__class__(**{**params.__dict__, **overrides})

    def query(q):
        b = tbl.search(q, vector_column_name="vec").distance_type("cosine").select(["id", "_distance"]).limit(K)
        return apply_search_params(b, params, K).to_arrow()["id"].to_numpy()

    for q in queries[:10]:  # warm the index cache, as a long-running service would be
        query(q)
    lat, hits = [], 0
    for q, t in zip(queries, truth):
        t0 = time.perf_counter()
        ids = query(q)
        lat.append((time.perf_counter() - t0) * 1000)
        hits += len(set(ids.tolist()) & set(t.tolist()))
    report(args, params, np.array(lat), hits, t_write, t_index)


def store_search(args) -> None:
    """Per-query time of one ``Workspace.search`` call over every patch of ``--dataset`` (a warm-up call on
    one patch first: imports and the table's first open are not the batch's cost)."""
    import mitoprobe

    ws = mitoprobe.open(args.store, read_only=True)
    queries = ws.patches(columns=["patch_id", "dataset"]).query("dataset == @args.dataset")["patch_id"].tolist()
    ws.search(args.model, queries[:1], k=args.k, reference=(args.reference,))
    t0 = time.perf_counter()
    hits = ws.search(args.model, queries, k=args.k, reference=(args.reference,))
    wall = time.perf_counter() - t0
    print(header())
    print(f"store             {args.store} ({len(ws.patches(columns=['patch_id'])):,} patches)")
    print(f"search            {len(queries):,} queries ({args.dataset}) x k={args.k} over {args.reference}, "
          f"{len(hits):,} rows, one Workspace.search call in-process")
    print(f"per query         {1000 * wall / len(queries):.2f} ms ({wall:.2f} s in all)")


def report(args, params, lat: np.ndarray, hits: int, t_write: float, t_index: float) -> None:
    """The figures (latency in ms per query, recall@K against exact search) under the machine's line."""
    print(header())
    print(f"vectors           {args.n:,} x {args.dim} (float32, clustered: {args.clusters} clusters, "
          f"latent dim {args.latent_dim}, spread {args.spread}, noise {args.noise}, cosine)")
    print(f"index             {params}")
    print("write / index     " + ("reused from --dir" if args.reuse and t_index != t_index
                                   else f"{t_write:.0f} s / {t_index:.0f} s"))
    print(f"queries           {args.queries} (single-threaded client, warm cache)")
    print(f"latency p50 / p95 {np.percentile(lat, 50):.2f} ms / {np.percentile(lat, 95):.2f} ms")
    print(f"recall@{K}         {hits / (K * args.queries):.3f}")


if __name__ == "__main__":
    main()
