"""mitoprobe's classifiers: CPU heads on stored embeddings, under the AMi-Br paper's protocol.

Never imports torch at module level (the paper-parity torch probe imports it inside ``fit``).

Example::

    from mitoprobe.store import Store
    from mitoprobe.classifiers import sweep, leaderboard
    sweep(Store(), "handcrafted", heads="all")
    print(leaderboard(Store()))
"""

from mitoprobe.paper import paper_results

from .heads import DEFAULT_HEADS, HEADS, make_head
from .metrics import POSITIVE
from .protocol import TEST_SETS, load_protocol
from .report import leaderboard
from .runner import sweep

__all__ = ["DEFAULT_HEADS", "HEADS", "POSITIVE", "TEST_SETS", "leaderboard", "load_protocol", "make_head",
           "paper_results", "sweep"]
