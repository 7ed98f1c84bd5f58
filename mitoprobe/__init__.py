"""mitoprobe: which foundation model and which head best tell atypical from normal mitoses.

The library (``mitoprobe.api``): ``ws = mitoprobe.open("mitoprobe-store")``, then ``ws.probe(...)``,
``ws.leaderboard()``, ``ws.compare(...)``, ``ws.protocol()``; every CLI command runs through it. The layers
live in this one namespace (``mitoprobe.store``, ``mitoprobe.embedder``, ``mitoprobe.classifiers``,
``mitoprobe.finetune``, ``mitoprobe.dashboard``), so no folder in a user's working directory shadows them.
Importing the package stays light: the API loads its layers on first use.
"""

__version__ = "0.1.0"


def open(path=None, read_only: bool = False, create: bool = False):  # noqa: A001 - the API's entry point
    """The store at ``path`` as a ``mitoprobe.api.Workspace`` (see ``mitoprobe.api.open``)."""
    from .api import open as _open

    return _open(path, read_only=read_only, create=create)
