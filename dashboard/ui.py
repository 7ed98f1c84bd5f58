"""Pieces every page shares: the store context, "run this next" guidance, pickers, thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from . import data

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


def family_options(runs: pd.DataFrame) -> dict[str, str]:
    """family_id -> readable label, best AMi-Br-test balanced accuracy first."""
    r = runs[runs["fold"] >= 0]
    score = r[r["test_set"] == "AMi-Br-test"].groupby("family_id")["balanced_accuracy"].mean()
    labels = runs.drop_duplicates("family_id").set_index("family_id")["label"]
    order = sorted(labels.index, key=lambda f: (-score.get(f, -1.0), labels[f]))
    return {f: labels[f] for f in order}


def pick_family(runs: pd.DataFrame, key: str, label: str = "Run family", families: list[str] | None = None,
                container=st) -> str:
    opts = family_options(runs)
    if families is not None:
        opts = {f: v for f, v in opts.items() if f in families} or opts
    return container.selectbox(label, list(opts), format_func=opts.get, key=key)


def pick_fold(runs: pd.DataFrame, family_id: str, key: str, container=st) -> int:
    choices = data.fold_choices(runs, family_id)
    return container.selectbox("Predictions from", choices, format_func=data.fold_name, key=key,
                               help="The fold ensemble averages the five fold models' probabilities.")


def pick_set(ctx: Ctx, key: str, container=st):
    """Choose an embedding set and one of its outputs; returns (EmbeddingSet, output)."""
    sets = data.embedding_sets(ctx.root)
    labels = {s.recipe_id: f"{s.name} · {s.recipe_id}" + ("" if s.complete else " (incomplete)") for s in sets}
    rid = container.selectbox("Embedding set", list(labels), format_func=labels.get, key=f"{key}_set")
    eset = next(s for s in sets if s.recipe_id == rid)
    outs = list(eset.outputs)
    out = container.selectbox("Output", outs, key=f"{key}_out",
                              format_func=lambda o: f"{o} ({eset.outputs[o]}-d)") if len(outs) > 1 else outs[0]
    return eset, out


def with_thumbnails(ctx: Ctx, df: pd.DataFrame, column: str = "thumbnail") -> pd.DataFrame:
    df = df.copy()
    df.insert(0, column, data.thumbnails(ctx.root, ctx.stamp, df["patch_id"].tolist()))
    return df


THUMB_COLUMN = st.column_config.ImageColumn("patch", width="small")
PROB_COLUMN = st.column_config.ProgressColumn("P(atypical)", min_value=0.0, max_value=1.0, format="%.3f")


def sidebar(ctx: Ctx) -> None:
    with st.sidebar:
        st.caption(f"Store: `{ctx.root}`")
        if st.button("Reload store", help="Forget cached reads (new runs also appear on their own)."):
            st.cache_data.clear()
            st.cache_resource.clear()
            st.rerun()
