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


def main() -> int:
    read_ahead.enable()  # this process serves the pages: read ahead at start and after each new store state
    sys.argv = ["streamlit", *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
