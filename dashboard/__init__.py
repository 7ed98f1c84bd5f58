"""The Streamlit results dashboard: leaderboard, comparisons, similarity search, embedding map, errors.

Reads the store only; its one write is the embedding map's "Build them now" button, which makes a set's
derived view files (``store/derived.py``) as ``embed`` does. ``serve`` starts ``streamlit run`` on :data:`APP` in a
subprocess; importing this package does not import streamlit.
"""

from .server import APP, serve, start

__all__ = ["APP", "serve", "start"]
