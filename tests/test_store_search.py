"""Similarity search over standardised vectors (issue 14): z-scored per dimension with the AMi-Br
train patches' statistics, so one huge-scale feature (handcrafted's |x| ~ 689) cannot dominate."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mitoprobe.store import features, integrity
from mitoprobe.store.errors import DamagedStoreError

DIM = 8


def _ids(st):
    meta = st.patches(columns=["patch_id", "dataset", "split"]).sort_values("patch_id").reset_index(drop=True)
    return meta


def _planted(n: int, seed: int = 0):
    """Six clusters in dims 1..7 (offset 5, cluster centres +-1, noise 0.2: like handcrafted's
    features, not centred); dim 0 huge (50..1500, like its |x| ~ 689 feature) and unrelated to them."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 6
    centres = rng.choice([-1.0, 1.0], size=(6, DIM - 1))
    X = np.empty((n, DIM))
    X[:, 0] = rng.uniform(50, 1500, n)
    X[:, 1:] = 5.0 + centres[cluster] + 0.2 * rng.standard_normal((n, DIM - 1))
    return X.astype(np.float32), cluster


def _write(st, recipe_id, ids, X, name="toy"):
    w = st.features.writer(recipe_id, name, {"v": X.shape[1]}, {})
    w.write_chunk(ids, ["none"] * len(ids), {"v": X})
    return w.finalize(expected_rows=len(ids))


@pytest.fixture
def planted(tiny_store):
    meta = _ids(tiny_store)
    X, cluster = _planted(len(meta))
    eset = _write(tiny_store, "plant1", meta["patch_id"].tolist(), X)
    return tiny_store, eset, meta, X, cluster


def _same_cluster_share(st, eset, meta, X, cluster, standardized, k=4):
    share = []
    for i in range(len(meta)):
        hits = st.features.search(eset, X[i], k=k + 1, standardized=standardized)
        rows = meta.reset_index().set_index("patch_id").loc[hits["patch_id"], "index"].to_numpy()
        rows = rows[rows != i][:k]
        share.append(np.mean(cluster[rows] == cluster[i]))
    return float(np.mean(share))


def test_standardised_search_recovers_planted_neighbours(planted):
    st, eset, meta, X, cluster = planted
    raw = _same_cluster_share(st, eset, meta, X, cluster, standardized=False)
    z = _same_cluster_share(st, eset, meta, X, cluster, standardized=True)
    assert z >= 0.8, z  # chance is 5/35; measured 0.88 (the stats come from only 8 train rows)
    assert raw <= 0.5, raw  # raw cosine follows the huge dimension, not the clusters (measured 0.35)
    spread_raw = st.features.search(eset, X[0], k=len(meta), standardized=False)["distance"]
    spread_z = st.features.search(eset, X[0], k=len(meta))["distance"]
    assert spread_raw.max() < 0.01 < 0.5 < spread_z.max()  # raw distances all read ~0.00x


def test_stats_come_from_amibr_train_rows_only(tiny_store):
    meta = _ids(tiny_store)
    X, _ = _planted(len(meta))
    a = _write(tiny_store, "stats_a", meta["patch_id"].tolist(), X)
    test_rows = np.flatnonzero((meta["split"] != "train").to_numpy())
    Y = X.copy()
    Y[test_rows[0]] *= 1e4  # a test patch changed wildly
    Y[test_rows[-1], 3] = -1e5
    b = _write(tiny_store, "stats_b", meta["patch_id"].tolist(), Y, name="toy2")
    sa, sb = tiny_store.features.search_stats(a), tiny_store.features.search_stats(b)
    assert sa["outputs"] == sb["outputs"]
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    assert sa["basis"] == "AMi-Br train" and sa["fallback"] is None and sa["rows"] == train.sum() == 8
    assert np.allclose(sa["outputs"]["v"]["mean"], X[train].astype(np.float64).mean(axis=0))
    assert np.allclose(sa["outputs"]["v"]["std"], X[train].astype(np.float64).std(axis=0))
    on_disk = json.loads((a.path / "search_stats.json").read_text())
    assert on_disk["outputs"]["v"]["mean"] == sa["outputs"]["v"]["mean"]


def test_fallback_to_all_rows_is_recorded(tiny_store):
    X, _ = _planted(30)
    eset = _write(tiny_store, "elsewhere", [f"x{i}" for i in range(30)], X)
    s = tiny_store.features.search_stats(eset)
    assert s["basis"] == "all rows" and "0 of the set's rows" in s["fallback"] and s["rows"] == 30
    assert np.allclose(s["outputs"]["v"]["mean"], X.astype(np.float64).mean(axis=0))


def test_zero_std_dimension_is_only_centred(tiny_store):
    meta = _ids(tiny_store)
    X, _ = _planted(len(meta))
    X[:, 5] = 7.0
    eset = _write(tiny_store, "flat", meta["patch_id"].tolist(), X)
    s = tiny_store.features.search_stats(eset)["outputs"]["v"]
    assert s["std"][5] == 1.0 and s["zero_std_dims"] == 1
    hits = tiny_store.features.search(eset, X[2], k=3)
    assert hits["patch_id"].iloc[0] == meta["patch_id"].iloc[2] and np.isfinite(hits["distance"]).all()


def test_query_is_standardised_like_the_stored_rows(planted):
    """An uploaded query (a raw vector) is z-scored with the same statistics: searching a stored
    row's raw vector finds that row at distance 0, and the ranking equals the exact ranking in
    standardised space computed here from the train rows."""
    st, eset, meta, X, _ = planted
    train = ((meta["dataset"] == "AMi-Br") & (meta["split"] == "train")).to_numpy()
    mu, sd = X[train].astype(np.float64).mean(0), X[train].astype(np.float64).std(0)
    Z = (X - mu) / sd
    Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    for i in (0, 7, 20):
        upload = np.array(X[i], dtype=np.float32, copy=True)  # what the dashboard's embedder returns
        hits = st.features.search(eset, upload, k=6)
        assert hits["patch_id"].iloc[0] == meta["patch_id"].iloc[i]
        assert hits["distance"].iloc[0] == pytest.approx(0, abs=1e-5)
        want = meta["patch_id"].to_numpy()[np.argsort(-(Zn @ Zn[i]), kind="stable")[:6]]
        assert hits["patch_id"].tolist()[1:] == want.tolist()[1:]
        d = 1 - Zn @ Zn[i]
        assert np.allclose(np.sort(d)[:6], hits["distance"].to_numpy(), atol=1e-4)


def _parts_digest(eset) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in eset.parts}


def test_old_table_without_z_columns_is_refused_then_repaired(planted):
    st, eset, meta, X, _ = planted
    fs = st.features
    before = _parts_digest(eset)
    want = fs.search(eset, X[3], k=5)["patch_id"].tolist()
    fs._lance().create_table(eset.recipe_id, data=fs.read_table(eset), mode="overwrite")  # what old code built
    (eset.path / "search_stats.json").unlink()
    with pytest.raises(DamagedStoreError, match=r"no standardised search column 'v__z'.*mitoprobe store repair --yes"):
        fs.search(eset, X[3], k=5)
    assert len(fs.search(eset, X[3], k=5, standardized=False)) == 5  # raw search still works
    [problem] = integrity.check(st)
    assert problem.kind == "lance" and "lacks the standardised search column" in problem.what
    assert "repair" in problem.fix
    actions = integrity.repair(st, dry_run=False)
    assert [a.action for a in actions] == ["rebuild LanceDB table"]
    assert integrity.check(st) == []
    assert fs.search(eset, X[3], k=5)["patch_id"].tolist() == want
    assert _parts_digest(fs.get(eset.recipe_id)) == before  # the canonical vectors are untouched


def test_stats_that_disagree_with_the_table_are_found(planted):
    st, eset, meta, X, _ = planted
    p = eset.path / "search_stats.json"
    info = json.loads(p.read_text())
    info["outputs"]["v"]["mean"][1] += 5.0
    p.write_text(json.dumps(info))
    [problem] = integrity.check(st)
    assert problem.kind == "lance" and "disagrees with search_stats.json" in problem.what
    integrity.repair(st, dry_run=False)
    assert integrity.check(st) == []
    p.write_text("{not json")
    with pytest.raises(DamagedStoreError, match="search_stats.json"):
        st.features.search(eset, X[0], k=3)
    assert [pr.kind for pr in integrity.check(st)] == ["lance"]
    integrity.repair(st, dry_run=False)
    assert integrity.check(st) == [] and len(st.features.search(eset, X[0], k=3)) == 3


def test_ann_index_covers_the_searched_column(tiny_store, monkeypatch):
    monkeypatch.setattr(features, "ANN_MIN_ROWS", 500)
    X, _ = _planted(600, seed=2)
    eset = _write(tiny_store, "annz", [f"p{i:04d}" for i in range(600)], X)
    tbl = tiny_store.features.lance_table(eset)
    assert [ix.columns for ix in tbl.list_indices()] == [["v__z"]]
    hits = tiny_store.features.search(eset, X[10], k=5)
    assert hits["patch_id"].iloc[0] == "p0010"


def test_an_indexed_set_answers_every_k_even_above_the_tuned_ef(tiny_store, monkeypatch):
    """Above ANN_MIN_ROWS the HNSW query's ef (100) once stayed fixed, and LanceDB refused any k above it
    (the neighbour search over-fetches k x 20): ef now follows k."""
    monkeypatch.setattr(features, "ANN_MIN_ROWS", 500)
    X, _ = _planted(600, seed=3)
    eset = _write(tiny_store, "annk", [f"p{i:04d}" for i in range(600)], X)
    assert tiny_store.features.searcher(eset)._params.ef == 100  # indexed: the ANN path is the one searched
    for k in (1, 3, 10, 50, 101, 250):
        hits = tiny_store.features.search(eset, X[7], k=k)
        assert len(hits) == k and hits["patch_id"].is_unique, k
    batch = tiny_store.features.searcher(eset).batch(X[:4], k=150)
    assert batch.groupby("query").size().tolist() == [150] * 4
