"""The dashboard's pages as data: one entry per page script in ``dashboard/app_pages/``.

``app.py`` turns these into ``st.Page`` objects; the tests parametrize over the same list, so a new
page is one file plus one entry here. Importing this module does not import streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"


@dataclass(frozen=True)
class PageSpec:
    key: str  # the URL path ("" for the default page)
    script: str  # file name in app_pages/
    title: str

    @property
    def path(self) -> Path:
        return PAGES_DIR / self.script


# No page icons: Streamlit's material icons come from an online font host, which fails offline.
PAGES: tuple[PageSpec, ...] = (
    PageSpec("", "leaderboard.py", "Leaderboard"),
    PageSpec("paper", "paper.py", "Paper verdict"),
    PageSpec("compare", "compare.py", "Compare"),
    PageSpec("similarity", "similarity.py", "Similarity search"),
    PageSpec("patch", "patch.py", "Patch viewer"),
    PageSpec("map", "embedding_map.py", "Embedding map"),
    PageSpec("errors", "errors.py", "Errors"),
)
