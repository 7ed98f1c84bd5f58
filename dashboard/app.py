"""The Streamlit entry script: page setup and navigation (``mitoprobe dashboard`` runs this file)."""

import streamlit as st

from mitoprobe.dashboard import links, navigation, read_ahead, ui

PAGES = [st.Page(p.path, title=p.title, default=not p.key, **({"url_path": p.key} if p.key else {}))
         for p in navigation.PAGES]

st.set_page_config(page_title="mitoprobe", layout="wide")  # no page_icon: material icons would be fetched online
page = st.navigation(PAGES)
links.enter(page.url_path)
with st.sidebar:
    st.markdown("**mitoprobe** · atypical vs normal mitoses")
ctx = ui.context()
ui.sidebar(ctx)
try:
    page.run()
finally:  # after the page, also when it stopped early: read ahead what the other pages open with (server only)
    if ctx.status.get("patches"):
        read_ahead.warm(ctx.root, ctx.stamp)
