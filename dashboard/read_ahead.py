"""The server reads ahead: once per state of the store, one background thread reads what the pages open with
into the pages' own caches, so a page opened after the first finds them read.

What: the patch index; the default set's patch ids, search table and distance sample (Similarity), the
similarity page's first view (gallery, first query's neighbours, their thumbnails), its PCA map joined with
the index and the thumbnails under it, and its robustness index (the embedding map); the runs.
At 200,000 patches these were 0.6-0.9 s of Similarity's first render alone (docs/benchmarks.md, "Cohort
scale, round 3"). Only in the server's own process (``dashboard.child`` calls :func:`enable`): AppTests and
library users read on demand. A read that fails here is left for the page that makes it to report. At start,
the server tells visitors to wait until this first pass has ended (``ready``; ``child.hold_visitors_until_read``).
"""

from __future__ import annotations

import logging
import threading
import time

import streamlit as st

from mitoprobe.store import Fingerprint

from . import data, derived_views

ENABLED = False
FIRST_PASS_WAIT = 20.0  # seconds the server may hold its first visitors (``ready``) while it reads ahead at start
log = logging.getLogger(__name__)
_first_pass = threading.Event()  # the read-ahead at start has ended (done, failed or nothing to read)
_waited_from = time.monotonic()


def enable(timeout: float = 60.0) -> None:
    """Read ahead from now on in this process, first as soon as Streamlit's runtime is up (the first
    visitor's page then finds the store's index read, or being read)."""
    global ENABLED, _waited_from
    ENABLED = True
    _first_pass.clear()
    _waited_from = time.monotonic()
    threading.Thread(target=_at_start, args=(timeout,), name="mitoprobe-read-ahead-start", daemon=True).start()


def ready() -> bool:
    """Whether the server may take visitors: the read-ahead at start has ended, or ``FIRST_PASS_WAIT`` has passed
    (a slow disk never keeps the dashboard closed). Always, where it does not read ahead."""
    return not ENABLED or _first_pass.is_set() or time.monotonic() - _waited_from > FIRST_PASS_WAIT


def _at_start(timeout: float) -> None:
    from streamlit import runtime

    try:
        deadline = time.monotonic() + timeout
        while not runtime.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        root = data.store_root()
        if runtime.exists() and data.status(root).get("patches"):
            thread = warm(root, data.stamp(root))
            if thread is not None:
                thread.join(FIRST_PASS_WAIT)
    except Exception as exc:  # noqa: BLE001 - read ahead only: the page that reads the store reports it
        log.debug("reading ahead at start stopped: %s", exc)
    finally:
        _first_pass.set()


def warm(root: str, stamp_: Fingerprint) -> threading.Thread | None:
    """Start reading ahead for this state of the patches and sets, unless a thread already has (or
    ``ENABLED`` is off); the thread that reads for it."""
    if ENABLED:
        return _warming(root, stamp_.patches, tuple(stamp_.sets), _stamp=stamp_)
    return None


@st.cache_resource(show_spinner=False, max_entries=2)
def _warming(root: str, patches_key: tuple, sets_key: tuple, _stamp: Fingerprint) -> threading.Thread:
    t = threading.Thread(target=warm_caches, args=(root, _stamp), name="mitoprobe-read-ahead", daemon=True)
    t.start()
    return t


def warm_caches(root: str, stamp_: Fingerprint) -> None:
    """The reads behind :func:`warm`, through the pages' own cached functions, the default set only (the
    pickers' first: ``data.embedding_sets``; the others are read when a user picks them)."""
    try:
        data.patch_index(root, stamp_)
        sets = data.embedding_sets(root)
        if sets:
            eset, output = sets[0], next(iter(sets[0].outputs))
            data.set_patches(root, stamp_, eset.recipe_id)
            data.distance_sample(root, stamp_, eset.recipe_id, output)
            data.first_similarity_view(root, stamp_, eset.recipe_id, output)
            view = derived_views.projection(root, stamp_, eset, output)
            if view.frame is not None:
                derived_views.first_map_view(root, stamp_, view)
            derived_views.robustness(root, stamp_, eset)
        data.runs(root, stamp_)
    except Exception as exc:  # noqa: BLE001 - read ahead only: the page making the same read reports it
        log.debug("reading ahead in %s stopped: %s", root, exc)
