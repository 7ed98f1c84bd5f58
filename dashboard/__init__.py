"""The Streamlit results dashboard: leaderboard, comparisons, similarity search, embedding map, errors.

Reads the store only (never writes). ``serve`` starts ``streamlit run`` on :data:`APP` in a
subprocess; importing this package does not import streamlit.
"""

from .server import APP, serve, start

__all__ = ["APP", "serve", "start"]
