"""The server's child process: import what the pages need, then hand over to Streamlit's own CLI.

Streamlit imports a page's modules in the first session that runs it, so the first visitor would wait
for pandas, scikit-learn, LanceDB, the classifiers... (seconds on two cores). Importing them here,
before the server answers its health check (``server.start`` waits for it), moves that wait to
start-up. Started as ``python -P -m mitoprobe.dashboard.child run app.py ...`` (``server.python_prefix``).
"""

import sys

import lancedb  # noqa: F401  (preloaded: similarity search)
import sklearn.decomposition  # noqa: F401  (preloaded: the embedding map's PCA)
from PIL import Image  # noqa: F401  (preloaded: thumbnails)
from streamlit.web import cli

from mitoprobe.dashboard import charts, data, links, read_ahead, ui  # noqa: F401  (preloaded: every page imports them)


def hold_visitors_until_read() -> None:
    """Streamlit's health check (``/_stcore/health``, which its page polls before it connects, and which
    ``server.start`` waits for) answers "not ready" until the read-ahead at start has ended (``read_ahead.ready``):
    the first visitor then finds the pages' first views read, instead of racing the read-ahead for two cores
    (docs/benchmarks.md, "Cohort scale, round 6"). Streamlit has no hook for it: the runtime's readiness property
    is wrapped (a Streamlit without it is left as it is)."""
    from streamlit.runtime.runtime import Runtime

    prop = getattr(Runtime, "is_ready_for_browser_connection", None)
    if not isinstance(prop, property):
        return

    async def is_ready(self) -> tuple[bool, str]:
        ok, message = await prop.fget(self)
        if ok and not read_ahead.ready():
            return False, "reading ahead"
        return ok, message

    Runtime.is_ready_for_browser_connection = property(is_ready)


def main() -> int:
    read_ahead.enable()  # this process serves the pages: read ahead at start and after each new store state
    hold_visitors_until_read()
    sys.argv = ["streamlit", *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
