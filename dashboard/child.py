"""The server's child process: import what the pages need, then hand over to Streamlit's own CLI.

Streamlit imports a page's modules in the first session that runs it, so the first visitor would wait
for pandas, scikit-learn, LanceDB, the classifiers... (seconds on two cores). Importing them here,
before the server answers its health check (``server.start`` waits for it), moves that wait to
start-up. Started as ``python -P -m mitoprobe.dashboard.child run app.py ...`` (``server.python_prefix``).
"""

import sys
import threading
import time

import lancedb  # noqa: F401  (preloaded: similarity search)
import sklearn.decomposition  # noqa: F401  (preloaded: the embedding map's PCA)
from PIL import Image  # noqa: F401  (preloaded: thumbnails)
from streamlit.web import cli

from mitoprobe.dashboard import charts, data, links, ui  # noqa: F401  (preloaded: every page imports them)


def read_ahead_at_start(timeout: float = 60.0) -> None:
    """As soon as Streamlit's runtime is up, read ahead what the first page will read (``data.warm``): the
    first visitor's page then finds the store's index read, or being read."""
    from streamlit import runtime

    deadline = time.monotonic() + timeout
    while not runtime.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    root = data.store_root()
    if runtime.exists() and data.status(root).get("patches"):
        data.warm(root, data.stamp(root))


def main() -> int:
    data.WARM_IN_BACKGROUND = True  # this process serves the pages: read ahead after each new store state
    threading.Thread(target=read_ahead_at_start, name="mitoprobe-read-ahead-start", daemon=True).start()
    sys.argv = ["streamlit", *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
