"""The server reads ahead (``dashboard.data.warm``): once per state of the store, in one background thread,
into the pages' own caches; never in AppTests or for library users (``WARM_IN_BACKGROUND`` off)."""

from __future__ import annotations

import pytest
import streamlit as st
from dashboard_store import build_dashboard_store, open_page

from mitoprobe.dashboard import data
from mitoprobe.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_dashboard_store(tmp_path_factory.mktemp("ahead"))


@pytest.fixture(autouse=True)
def empty_caches():
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


def test_reading_ahead_fills_what_similarity_reads_first(store, monkeypatch):
    root = str(store.root)
    stamp = data.stamp(root)
    data.warm_caches(root, stamp)
    sets = data.embedding_sets(root)

    def no_more_reads(*args, **kwargs):
        raise AssertionError("read again: the read-ahead did not fill this cache")

    n = len(store.patches(columns=["patch_id"]))
    monkeypatch.setattr(Store, "patches", no_more_reads)
    monkeypatch.setattr(data, "_searcher", no_more_reads)
    monkeypatch.setattr(data, "_set_ids", no_more_reads)
    assert len(data.patch_index(root, stamp)) == n
    eset = sets[0]  # the pickers' default
    assert len(data.set_patches(root, stamp, eset.recipe_id)) > 0
    key = data._search_key(root, stamp, eset.recipe_id)
    ids, Z = data._distance_sample(root, key, eset.recipe_id, next(iter(eset.outputs)))
    assert len(ids) == len(Z) > 0


def test_one_thread_per_store_state_and_none_unless_the_server_asks(store, monkeypatch):
    root = str(store.root)
    started = []
    monkeypatch.setattr(data, "warm_caches", lambda r, s: started.append((r, s)))
    data.warm(root, data.stamp(root))
    assert started == []  # WARM_IN_BACKGROUND is off: AppTests and the library read on demand
    monkeypatch.setattr(data, "WARM_IN_BACKGROUND", True)
    for _ in range(3):
        data.warm(root, data.stamp(root))
    data._warming(root, data.stamp(root).patches, tuple(data.stamp(root).sets), _stamp=data.stamp(root)).join(10)
    assert started == [(root, data.stamp(root))]


def test_a_failed_read_ahead_leaves_the_error_to_the_page(store, monkeypatch):
    """A damaged store: reading ahead logs and stops; the page itself still says what is wrong."""
    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(data, "patch_index", broken)
    data.warm_caches(str(store.root), data.stamp(str(store.root)))  # no exception escapes the thread's work
    monkeypatch.undo()
    open_page(store.root, "similarity", monkeypatch)
