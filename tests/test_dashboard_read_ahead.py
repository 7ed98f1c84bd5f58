"""The server reads ahead (``dashboard.read_ahead``): once per state of the store, in one background thread,
into the pages' own caches; never in AppTests or for library users (``ENABLED`` off)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import streamlit as st
from dashboard_store import build_dashboard_store, open_page

from mitoprobe.dashboard import data, derived_views, read_ahead
from mitoprobe.store import Store, derived
from mitoprobe.store.features import Searcher


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


def test_reading_ahead_fills_what_the_pages_open_with(store, monkeypatch):
    root = str(store.root)
    stamp = data.stamp(root)
    read_ahead.warm_caches(root, stamp)
    eset = data.embedding_sets(root)[0]  # the pickers' default
    output = next(iter(eset.outputs))
    n = len(store.patches(columns=["patch_id"]))

    def no_more_reads(*args, **kwargs):
        raise AssertionError("read again: the read-ahead did not fill this cache")

    for owner, name in ((Store, "patches"), (data, "_searcher"), (data, "_set_ids"), (type(store.results), "read"),
                        (derived, "read")):
        monkeypatch.setattr(owner, name, no_more_reads)
    assert len(data.patch_index(root, stamp)) == n
    assert len(data.set_patches(root, stamp, eset.recipe_id)) > 0
    ids, Z = data.distance_sample(root, stamp, eset.recipe_id, output)
    assert len(ids) == len(Z) > 0
    view = derived_views.projection(root, stamp, eset, output)
    assert view.state == "current" and len(derived_views.map_frame(root, stamp, view)) > 0
    assert derived_views.robustness(root, stamp, eset).state == "current"
    assert len(data.runs(root, stamp))


def test_one_thread_per_store_state_and_none_unless_the_server_asks(store, monkeypatch):
    root = str(store.root)
    started = []
    monkeypatch.setattr(read_ahead, "warm_caches", lambda r, s: started.append((r, s)))
    read_ahead.warm(root, data.stamp(root))
    assert started == []  # not enabled: AppTests and the library read on demand
    monkeypatch.setattr(read_ahead, "ENABLED", True)
    for _ in range(3):
        read_ahead.warm(root, data.stamp(root))
    stamp = data.stamp(root)
    read_ahead._warming(root, stamp.patches, tuple(stamp.sets), _stamp=stamp).join(10)
    assert started == [(root, stamp)]


def test_a_failed_read_ahead_leaves_the_error_to_the_page(store, monkeypatch):
    """A read failing ahead (here: every read of the patch index) stops quietly; the page works on."""
    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(data, "patch_index", broken)
    read_ahead.warm_caches(str(store.root), data.stamp(str(store.root)))  # no exception escapes
    monkeypatch.undo()
    open_page(store.root, "similarity", monkeypatch)


def test_the_similarity_pages_first_view_is_read_ahead(store, monkeypatch):
    """Its gallery, its first query's neighbours (the ANN index loaded), every thumbnail, the rows shown and
    the default run family's predictions: the page then renders without reading a PNG or a patch row, searching
    or reading a prediction (the same cache keys: gallery size and seed, k, family and fold)."""
    root = str(store.root)
    read_ahead.warm_caches(root, data.stamp(root))
    searched, read, results = [], [], []
    real_nearest, real_images, real_read = Searcher.nearest, Store.images, type(store.results).read
    monkeypatch.setattr(Searcher, "nearest", lambda self, *a, **k: searched.append(a) or real_nearest(self, *a, **k))
    monkeypatch.setattr(Store, "images", lambda self, ids: read.append(list(ids)) or real_images(self, ids))
    monkeypatch.setattr(type(store.results), "read",
                        lambda self, table, *a, **k: results.append(table) or real_read(self, table, *a, **k))
    rows = []
    real_patches = Store.patches
    monkeypatch.setattr(Store, "patches", lambda self, *a, **k: rows.append(k.get("patch_ids")) or real_patches(self, *a, **k))
    at = open_page(store.root, "similarity", monkeypatch)
    assert len(at.dataframe[0].value) == data.SIMILARITY_K
    assert at.dataframe[0].value["probability"].notna().any()  # the family's predictions are shown
    assert searched == [] and read == [] and rows == []
    assert "predictions" not in results  # (open_page opens the leaderboard first, which reads the runs)


def test_the_health_check_holds_visitors_until_the_read_ahead_at_start_has_ended(monkeypatch):
    """``/_stcore/health`` (which Streamlit's page polls before it connects) says "not ready" while the server
    reads ahead at start, and ready once it has ended or ``FIRST_PASS_WAIT`` has passed."""
    from streamlit.runtime.runtime import Runtime

    from mitoprobe.dashboard import child

    async def streamlit_ready():
        return True, "ok"

    monkeypatch.setattr(Runtime, "is_ready_for_browser_connection", property(lambda self: streamlit_ready()))
    child.hold_visitors_until_read()
    monkeypatch.setattr(read_ahead, "ENABLED", True)
    monkeypatch.setattr(read_ahead, "_first_pass", threading.Event())
    monkeypatch.setattr(read_ahead, "_waited_from", time.monotonic())

    def health():
        return asyncio.run(Runtime.is_ready_for_browser_connection.fget(object()))

    assert health() == (False, "reading ahead")
    read_ahead._first_pass.set()
    assert health() == (True, "ok")
    read_ahead._first_pass.clear()
    monkeypatch.setattr(read_ahead, "_waited_from", time.monotonic() - read_ahead.FIRST_PASS_WAIT - 1)
    assert health() == (True, "ok")  # a slow read never keeps the dashboard closed


def test_the_read_ahead_at_start_ends_also_when_it_fails(monkeypatch):
    monkeypatch.setattr(read_ahead, "_first_pass", threading.Event())

    def broken():
        raise OSError("disk gone")

    monkeypatch.setattr(data, "store_root", broken)
    read_ahead._at_start(0.0)  # no exception escapes
    assert read_ahead._first_pass.is_set()


def test_the_maps_first_thumbnails_are_read_ahead(store, monkeypatch):
    """The map page's gallery under the map (the same draw: ``derived_views.drawn``, seed 0) reads no PNG."""
    root = str(store.root)
    read_ahead.warm_caches(root, data.stamp(root))
    read = []
    real_images = Store.images
    monkeypatch.setattr(Store, "images", lambda self, ids: read.append(list(ids)) or real_images(self, ids))
    at = open_page(store.root, "map", monkeypatch)
    assert not at.exception and read == []
