"""Round trips: every table our code writes reads back equal through pyarrow, DuckDB and lancedb
directly (no mitoprobe code on the read side), and vector search is exact for small sets."""

from __future__ import annotations

import duckdb
import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import mitoprobe.store.features as features
from mitoprobe.store import Store

OUTPUTS = {"cls": 16, "mean": 8}


@pytest.fixture
def filled(tiny_store: Store):
    """tiny_store + a finished embedding set (2 views) + runs and predictions."""
    ids = tiny_store.patches()["patch_id"].tolist()
    rng = np.random.default_rng(0)
    keys = [(p, v) for v in ("none", "hflip") for p in ids]
    vec = {k: rng.standard_normal((len(keys), d)).astype(np.float32) for k, d in OUTPUTS.items()}
    w = tiny_store.features.writer("abc123", "toy", OUTPUTS, {"model": "toy"})
    half = len(keys) // 2
    for sl in (slice(0, half), slice(half, None)):
        w.write_chunk([k[0] for k in keys[sl]], [k[1] for k in keys[sl]], {k: v[sl] for k, v in vec.items()})
    w.finalize(expected_rows=len(keys))
    tiny_store.results.append("runs", pd.DataFrame({"run_id": ["a"], "model": ["toy"], "bal_acc": [0.7]}))
    tiny_store.results.append("runs", pd.DataFrame({"run_id": ["b"], "model": ["toy"], "bal_acc": [0.8], "auroc": [0.9]}))
    tiny_store.results.append("predictions", pd.DataFrame({"run_id": ["a"] * len(ids), "patch_id": ids,
                                                           "score": rng.random(len(ids))}))
    expected = pd.DataFrame({"patch_id": [k[0] for k in keys], "view": [k[1] for k in keys]})
    return tiny_store, expected, vec


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["patch_id", "view"]).reset_index(drop=True)


def _matrix(col) -> np.ndarray:
    return np.stack([np.asarray(v, dtype=np.float32) for v in col])


def test_patches_pyarrow_duckdb_equal(tiny_store: Store):
    parts = [str(p) for p in tiny_store.patch_parts.part_paths()]
    assert parts and all("/patches/part-" in p for p in parts)  # a new store is written in parts
    ours = tiny_store.patches().sort_values("patch_id").reset_index(drop=True)
    arrow = pa.concat_tables([pq.read_table(p) for p in parts]).to_pandas().sort_values("patch_id")
    arrow = arrow.reset_index(drop=True)
    duck = duckdb.connect().execute(f"select * from read_parquet({parts}) order by patch_id").df()
    def values(df: pd.DataFrame) -> pd.DataFrame:  # ours has nullable Int64/boolean columns, arrow's float/object
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(values(ours), values(arrow.drop(columns=["png"])))
    assert list(duck.columns) == list(arrow.columns)
    for col in ("patch_id", "dataset", "split", "label", "slide", "content_sha256"):
        assert duck[col].tolist() == arrow[col].tolist()
    assert [bytes(b) for b in duck["png"]] == arrow["png"].tolist()
    assert duck["y"].tolist() == arrow["y"].tolist()
    streamed = {p: b for t in tiny_store.iter_images() for p, b in zip(t["patch_id"].to_pylist(), t["png"].to_pylist())}
    assert streamed == dict(zip(arrow["patch_id"], arrow["png"]))
    assert tiny_store.sql("select count(*) n from patches")["n"][0] == len(ours)


def test_embeddings_pyarrow_duckdb_lancedb_equal(filled):
    st, expected, vec = filled
    eset = st.features.get("abc123")
    want = expected.assign(cls=list(vec["cls"]), mean=list(vec["mean"]))
    want = _sorted(want)

    parts = sorted(str(p) for p in eset.path.glob("part-*.parquet"))
    arrow = _sorted(ds.dataset(parts, format="parquet").to_table().to_pandas())
    duck = _sorted(duckdb.connect().execute(f"select * from read_parquet('{eset.path}/part-*.parquet')").df())
    lance = _sorted(lancedb.connect(str(st.root / "lance")).open_table("abc123").to_pandas())
    for got in (arrow, duck, lance):
        assert got[["patch_id", "view"]].equals(want[["patch_id", "view"]])
        for out in OUTPUTS:
            np.testing.assert_array_equal(_matrix(got[out]), _matrix(want[out]))
    # ... and our reader agrees (outputs concatenated in declared order).
    keys, X = st.features.read("toy", "abc123")
    ours = _sorted(keys.assign(cls=list(X[:, :16]), mean=list(X[:, 16:])))
    np.testing.assert_array_equal(_matrix(ours["cls"]), _matrix(want["cls"]))
    keys, X = st.features.read("toy", "abc123", outputs=["mean"], views=["hflip"])
    assert set(keys["view"]) == {"hflip"} and X.shape == (len(want) // 2, 8)
    # The provenance is plain JSON next to the vectors.
    assert (eset.path / "recipe.json").is_file() and eset.provenance["model"] == "toy"


def test_results_and_views_through_duckdb(filled):
    st, expected, _ = filled
    runs = duckdb.connect().execute(
        f"select * from read_parquet('{st.results.table_dir('runs')}/part-*.parquet', union_by_name=true) order by run_id").df()
    assert runs["run_id"].tolist() == ["a", "b"] and runs["auroc"].isna().tolist() == [True, False]
    pd.testing.assert_frame_equal(st.results.read("runs").sort_values("run_id").reset_index(drop=True),
                                  pa.concat_tables([pq.read_table(p) for p in st.results.parts("runs")],
                                                   promote_options="permissive").to_pandas()
                                  .sort_values("run_id").reset_index(drop=True), check_like=True)
    # Our DuckDB views join everything.
    n = st.sql("select count(*) n from predictions join patches using (patch_id)")["n"][0]
    assert n == 36
    e = st.sql("select count(*) n, count(distinct view) v from emb_abc123")
    assert (e["n"][0], e["v"][0]) == (len(expected), 2)
    assert st.sql("select name, complete from embedding_sets").to_dict("records") == [{"name": "toy", "complete": True}]


def test_exact_search_small_set(filled):
    st, expected, vec = filled
    eset = st.features.get("abc123")
    q = vec["cls"][3]
    hits = st.features.search(eset, q, output="cls", k=5, view="none", standardized=False)  # raw cosine
    X = vec["cls"][: len(vec["cls"]) // 2]  # the "none" view rows
    sims = X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    want = expected["patch_id"].iloc[np.argsort(-sims)[:5]].tolist()
    assert hits["patch_id"].tolist() == want
    assert hits["distance"].iloc[0] == pytest.approx(0, abs=1e-5)
    assert set(hits["view"]) == {"none"}


def test_ann_index_once_large(tiny_store, monkeypatch):
    """Above ANN_MIN_ROWS the LanceDB table gets an ANN index and search goes through it."""
    monkeypatch.setattr(features, "ANN_MIN_ROWS", 2_000)
    n, dim = 3_000, 32
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, dim))
    X = (centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    ids = [f"p{i:05d}" for i in range(n)]
    w = tiny_store.features.writer("big", "big", {"cls": dim}, {})
    w.write_chunk(ids, ["none"] * n, {"cls": X})
    eset = w.finalize(expected_rows=n)
    tbl = tiny_store.features.lance_table(eset)
    assert [ix.index_type for ix in tbl.list_indices()] == ["IvfHnswSq"]
    Z = tiny_store.features.standardize(eset, "cls", X)  # search compares standardised vectors by default
    Xn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    hits = 0
    for i in range(0, n, 150):
        truth = set(np.array(ids)[np.argsort(-(Xn @ Xn[i]))[:10]])
        hits += len(truth & set(tiny_store.features.search(eset, X[i], k=10)["patch_id"]))
    assert hits / (10 * len(range(0, n, 150))) >= 0.9


def test_search_unknown_output(filled):
    st, _, _ = filled
    from mitoprobe.store import StoreError

    with pytest.raises(StoreError, match="not 'nope'"):
        st.features.search(st.features.get("abc123"), np.zeros(16), output="nope")


def test_read_streams_the_kept_views_in_key_order_across_parts_and_batches(tiny_store: Store):
    """``read`` copies the vectors batch by batch (2,048 rows) into one array: with 2 or 3 views a patch (an
    irregular mask), parts of uneven size and batches that straddle them, every row still is its key's."""
    n = 9_000
    ids = [f"p{i:05d}" for i in range(n)]
    w = tiny_store.features.writer("big123", "big", {"cls": 3}, {"model": "big"})
    rows = 0
    for lo, hi in ((0, 7_000), (7_000, n)):  # part 1: ~16,300 rows (two batches), part 2: ~4,700
        keys = [(ids[i], v) for i in range(lo, hi) for v in ("none", "hflip", "vflip")[:2 + (i % 3 == 0)]]
        code = np.array([[int(p[1:]), ("none", "hflip", "vflip").index(v), 7] for p, v in keys], dtype=np.float32)
        w.write_chunk([k[0] for k in keys], [k[1] for k in keys], {"cls": code})
        rows += len(keys)
    w.finalize(expected_rows=rows)
    for views in (["vflip"], ["hflip"], ["none", "vflip"], None):
        keys, X = tiny_store.features.read("big", "big123", views=views)
        want = sum({"none": n, "hflip": n, "vflip": n // 3}[v] for v in views) if views else rows
        assert len(keys) == len(X) == want and X.dtype == np.float32
        np.testing.assert_array_equal(X[:, 0], keys["patch_id"].str[1:].astype(int).to_numpy())
        np.testing.assert_array_equal(X[:, 1], keys["view"].map({"none": 0, "hflip": 1, "vflip": 2}).to_numpy())
        assert (X[:, 2] == 7).all()


def test_read_refuses_vectors_that_do_not_match_the_keys_read_before_them(filled, monkeypatch):
    """Keys and vectors are two reads of the parts: a part that changed between them is damage, never a
    matrix misaligned with its keys."""
    from mitoprobe.store.errors import DamagedStoreError

    st, _, _ = filled
    keys_then = st.features.read_table
    monkeypatch.setattr(type(st.features), "read_table", lambda self, eset, columns=None: keys_then(eset, columns).slice(1))
    with pytest.raises(DamagedStoreError, match="changed while read"):
        st.features.read("toy", "abc123")
