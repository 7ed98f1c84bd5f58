"""Pieces every page shares: the store context, "run this next" guidance, pickers, thumbnails."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from . import data, links

NEXT_STEP = {
    "patches": ("No patches in this store yet.", "mitoprobe data import"),
    "sets": ("No embedding sets in this store yet.", "mitoprobe embed --model handcrafted"),
    "runs": ("No classifier runs in this store yet.", "mitoprobe probe --model handcrafted"),
    "predictions": ("No stored predictions in this store yet.", "mitoprobe probe --model handcrafted"),
}


@dataclass(frozen=True)
class Ctx:
    root: str
    stamp: data.Fingerprint
    status: dict


def context() -> Ctx:
    root = data.store_root()
    return Ctx(root=root, stamp=data.stamp(root), status=data.status(root))


def require(ctx: Ctx, *needs: str) -> None:
    """Stop the page with a friendly next step when the store lacks something it needs."""
    for need in ("patches", "sets", "runs", "predictions"):
        if need in needs and not ctx.status[need]:
            what, cmd = NEXT_STEP[need]
            st.info(f"{what} Run this next (store `{ctx.root}`):")
            st.code(f"{cmd} --store {ctx.root}", language="bash")
            if need != "patches":
                st.caption("Or run the whole pipeline at once: `mitoprobe run`.")
            st.stop()


def pick_family(runs: pd.DataFrame, key: str, label: str = "Run family", families: list[str] | None = None,
                container=st) -> str:
    """A run family, bound to the URL's ``family`` parameter."""
    opts = data.family_options(runs)
    if families is not None:
        opts = {f: v for f, v in opts.items() if f in families} or opts
    return links.bound(key, links.FAMILY, lambda: container.selectbox(label, list(opts), format_func=opts.get,
                                                                      key=key), valid=opts)


def pick_fold(runs: pd.DataFrame, family_id: str, key: str, container=st) -> int:
    """The fold ensemble (-1) or one fold model, bound to the URL's ``fold`` parameter."""
    choices = data.fold_choices(runs, family_id)
    if st.session_state.get(key) not in choices:
        st.session_state.pop(key, None)
    return links.bound(key, links.FOLD, lambda: container.selectbox(
        "Predictions from", choices, format_func=data.fold_name, key=key,
        help="The fold ensemble averages the five fold models' probabilities."), valid=choices, cast=int)


def pick_test_set(test_sets: list[str], key: str, container=st) -> str:
    """One of the test sets found in the results, bound to the URL's ``test_set`` parameter."""
    if st.session_state.get(key) not in test_sets:
        st.session_state.pop(key, None)
    return links.bound(key, links.TEST_SET, lambda: container.radio("Test set", test_sets, horizontal=True,
                                                                    key=key), valid=test_sets)


def pick_set(ctx: Ctx, key: str, container=st):
    """Choose an embedding set and one of its outputs; returns (EmbeddingSet, output). Bound to the
    URL's ``set`` (a recipe id, or a model name when only one set has it) and ``output``."""
    sets = data.embedding_sets(ctx.root)
    labels = {s.recipe_id: f"{s.name} · {s.recipe_id}" + ("" if s.complete else " (incomplete)") for s in sets}
    names = [s.name for s in sets]
    by_name = {s.name: s.recipe_id for s in sets if names.count(s.name) == 1}  # a shared name is ambiguous
    rid = links.bound(f"{key}_set", links.SET, lambda: container.selectbox(
        "Embedding set", list(labels), format_func=labels.get, key=f"{key}_set"),
        cast=lambda v: v if v in labels else by_name.get(v), valid=labels)
    eset = next(s for s in sets if s.recipe_id == rid)
    outs = list(eset.outputs)
    if len(outs) == 1:
        return eset, outs[0]
    if st.session_state.get(f"{key}_out") not in outs:
        st.session_state.pop(f"{key}_out", None)
    out = links.bound(f"{key}_out", links.OUTPUT, lambda: container.selectbox(
        "Output", outs, key=f"{key}_out", format_func=lambda o: f"{o} ({eset.outputs[o]}-d)"), valid=outs)
    return eset, out


def with_thumbnails(ctx: Ctx, df: pd.DataFrame, column: str = "thumbnail") -> pd.DataFrame:
    df = df.copy()
    df.insert(0, column, data.thumbnails(ctx.root, ctx.stamp, df["patch_id"].tolist()))
    return df


THUMB_COLUMN = st.column_config.ImageColumn("patch", width="small")
PROB_COLUMN = st.column_config.ProgressColumn("P(atypical)", min_value=0.0, max_value=1.0, format="%.3f")
QUERY_LINK_COLUMN = st.column_config.LinkColumn(
    "patch id", display_text=r"patch=([^&]+)",
    help="Opens this patch as the similarity query (a shareable link, in a new tab)")


def query_links(ids, **params) -> list[str]:
    """Per patch id, the URL that opens it as the similarity query (``QUERY_LINK_COLUMN`` cells)."""
    return [links.href("similarity", patch=pid, **params) for pid in ids]


def thumbnail_grid(ctx: Ctx, ids: list[str], captions: list[str], container=st, size: int = 112,
                   **params) -> None:
    """Thumbnails as one HTML grid, each a link opening its patch as the similarity query (``params``:
    set, family, ... carried along). One element instead of two per thumbnail: faster to send and draw.
    ``captions`` are plain text; a line break is kept."""
    urls = data.thumbnails(ctx.root, ctx.stamp, ids)
    cells = []
    for pid, url, cap in zip(ids, urls, captions):
        if url is None:
            continue
        text = "<br>".join(html.escape(line) for line in str(cap).split("\n"))
        cells.append(f'<a href="{html.escape(links.href("similarity", patch=pid, **params))}" '
                     f'title="{html.escape(pid)}: open as similarity query" style="text-decoration:none;color:inherit">'
                     f'<img src="{url}" alt="{html.escape(pid)}" style="width:{size}px;height:{size}px;'
                     f'border-radius:4px;display:block">'
                     f'<div style="font-size:0.78rem;line-height:1.25;margin-top:2px">{text}</div></a>')
    container.html(f'<div style="display:grid;grid-template-columns:repeat(auto-fill,{size}px);gap:10px 12px">'
                   + "".join(cells) + "</div>")


def sidebar(ctx: Ctx) -> None:
    with st.sidebar:
        st.caption(f"Store: `{ctx.root}`")
        if st.button("Reload store", help="Forget cached reads (new runs also appear on their own)."):
            st.cache_data.clear()
            st.cache_resource.clear()
            st.rerun()
