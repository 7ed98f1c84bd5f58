"""The Streamlit entry script: page setup and navigation (``mitoprobe dashboard`` runs this file)."""

from pathlib import Path

import streamlit as st

from dashboard import ui

HERE = Path(__file__).resolve().parent
PAGES = [
    st.Page(HERE / "views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:", default=True),
    st.Page(HERE / "views/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(HERE / "views/similarity.py", title="Similarity search", icon=":material/image_search:",
            url_path="similarity"),
    st.Page(HERE / "views/embedding_map.py", title="Embedding map", icon=":material/scatter_plot:",
            url_path="map"),
    st.Page(HERE / "views/errors.py", title="Errors", icon=":material/error:", url_path="errors"),
]

st.set_page_config(page_title="mitoprobe", layout="wide")  # no page_icon: material icons would be fetched online
page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("**mitoprobe** · atypical vs normal mitoses")
ui.sidebar(ui.context())
page.run()
