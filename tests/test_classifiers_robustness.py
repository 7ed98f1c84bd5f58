"""Site robustness: do neighbourhoods follow the label or the site?"""

from __future__ import annotations

import numpy as np
import pytest

from mitoprobe.classifiers.robustness import neighbours, robustness_index


def _clusters(by: str, n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    sites = rng.integers(0, 3, n)
    centre = labels if by == "label" else sites
    X = rng.normal(size=(n, 8)) * 0.3
    X[np.arange(n), centre] += 3.0  # one axis per cluster
    return X, labels, sites


def test_neighbours_are_exact_cosine_top_k():
    X, _, _ = _clusters("label", n=60)
    nn = neighbours(X, 5, chunk=7)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    sim = U @ U.T
    np.fill_diagonal(sim, -np.inf)
    np.testing.assert_array_equal(nn, np.argsort(-sim, axis=1, kind="mergesort")[:, :5])


@pytest.mark.parametrize("by, high", [("label", True), ("site", False)])
def test_index_tells_label_from_site_grouping(by, high):
    X, labels, sites = _clusters(by)
    r = robustness_index(labels, sites, neighbours(X, 10))
    if high:
        assert r["robustness_index"] > 0.9 and r["label_agreement"] > 0.95
        assert r["site_agreement"] == pytest.approx(r["site_base_rate"], abs=0.08)  # site: chance level
    else:
        assert r["robustness_index"] < 0.2 and r["site_agreement"] > 0.95
        assert r["label_agreement"] == pytest.approx(r["label_base_rate"], abs=0.08)


def test_report_robustness_on_a_store(tiny_store, monkeypatch, capsys):
    from mitoprobe import embedder
    from conftest import run_cli

    embedder.embed(tiny_store, "handcrafted", progress=False, num_workers=0)
    code, out = run_cli(monkeypatch, capsys, "report", "--robustness", "--k", "3", "--store", str(tiny_store.root),
                        "--format", "csv")
    assert code == 0, out
    assert out.splitlines()[0].startswith("model,recipe_id,output,k,n,queries,robustness_index") and "handcrafted" in out


def test_a_large_set_is_counted_on_a_sample_of_queries_among_all_neighbours(tiny_store):
    """Above MAX_QUERIES the cost is queries x patches, not patches squared: the sampled rows' neighbours are
    exactly those of the full search, and the counts are theirs."""
    from mitoprobe import embedder
    from mitoprobe.classifiers.robustness import site_robustness

    X, labels, sites = _clusters("label", n=90)
    q = np.array([3, 17, 40, 41, 88])
    np.testing.assert_array_equal(neighbours(X, 5, chunk=2, queries=q), neighbours(X, 5)[q])
    full = neighbours(X, 5)
    r = robustness_index(labels, sites, full[q], q)
    assert r["sl_os"] == int(((labels[full[q]] == labels[q][:, None]) & (sites[full[q]] != sites[q][:, None])).sum())
    embedder.embed(tiny_store, "handcrafted", progress=False, num_workers=0)
    exact = site_robustness(tiny_store, "handcrafted", k=3)
    sampled = site_robustness(tiny_store, "handcrafted", k=3, max_queries=20)
    assert (exact["n"], exact["queries"], sampled["n"], sampled["queries"]) == (36, 36, 36, 20)
    assert sampled == site_robustness(tiny_store, "handcrafted", k=3, max_queries=20)  # fixed seed
