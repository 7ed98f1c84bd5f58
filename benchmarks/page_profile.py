"""Where a dashboard page's server time goes: each ``dashboard.data`` / ``ui`` / ``derived_views`` function's
seconds in one page run, in-process.

Why: ``page_curves`` gives what a browser waits for; this says which read on the server is behind it (issue
30's similarity page: the family's predictions, the set's ids, the gallery's lookup, the thumbnails). It opens
the page with Streamlit's ``AppTest`` (store from ``$MITOPROBE_STORE``, as the server passes it) and times two
runs: the first with every cache cold, or (``--after-read-ahead``) after the server's read-ahead
(``read_ahead.warm_caches``, timed on its own line), then a rerun. LanceDB, scikit-learn's PCA and PIL are
imported first, as the server's process does (``dashboard.child``). Only top-level calls are counted: a
function called by another counted one is inside its figure.

Usage: python -m benchmarks.page_profile --store /tmp/cc/x30/store [--page similarity] [--after-read-ahead]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import time
from pathlib import Path

from .machine import header

SHOWN = 14  # functions listed per run, slowest first


def _timed(modules) -> collections.defaultdict:
    """Wrap each public function of ``modules`` so that top-level calls add their seconds to the returned dict."""
    seconds: collections.defaultdict = collections.defaultdict(float)
    depth = [0]

    def wrap(mod, name, f):
        @functools.wraps(f)
        def g(*a, **k):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    seconds[f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"] += time.perf_counter() - t0
        setattr(mod, name, g)

    for mod in modules:
        for name, f in list(vars(mod).items()):
            if callable(f) and not name.startswith("_") and not isinstance(f, type) \
                    and getattr(f, "__module__", "") == mod.__name__:
                wrap(mod, name, f)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--page", default="similarity", help="the page's URL path (dashboard/navigation.py; '' = leaderboard)")
    p.add_argument("--after-read-ahead", action="store_true", help="run the server's read-ahead first")
    a = p.parse_args()
    os.environ["MITOPROBE_STORE"] = str(Path(a.store).resolve())
    import lancedb  # noqa: F401  (as dashboard.child preloads them)
    import sklearn.decomposition  # noqa: F401
    from PIL import Image  # noqa: F401
    from streamlit.testing.v1 import AppTest
    from streamlit.util import calc_hash

    from mitoprobe.dashboard import APP, data, derived_views, read_ahead, ui

    print(header())
    seconds = _timed([data, ui, derived_views])
    if a.after_read_ahead:
        root = data.store_root()
        t0 = time.perf_counter()
        read_ahead.warm_caches(root, data.stamp(root))
        print(f"read-ahead: {time.perf_counter() - t0:.2f} s")
    at = AppTest.from_file(str(APP), default_timeout=300)
    at._page_hash = calc_hash(a.page)  # open the page itself (st.Page hashes its url_path: private API)
    for run in ("first run" + (" after the read-ahead" if a.after_read_ahead else ", caches cold"), "rerun"):
        seconds.clear()
        t0 = time.perf_counter()
        at.run()
        print(f"{a.page or 'leaderboard'}, {run}: {time.perf_counter() - t0:.2f} s"
              + (f"  (exceptions: {[str(e.value)[:120] for e in at.exception]})" if at.exception else ""))
        for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:SHOWN]:
            print(f"  {name:38s} {s:.3f}")


if __name__ == "__main__":
    main()
