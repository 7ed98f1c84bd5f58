"""Embedding map: a 2-D projection of one embedding set, coloured by label, dataset or a run's results."""

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.dashboard import charts, data, links, ui
from mitoprobe.store.errors import MitoprobeError

ctx = ui.context()
st.title("Embedding map")
st.caption("Each dot is one patch (original view). Drag a rectangle on the map to see the patches inside it, or "
           "click one patch to open it as the similarity query.")
ui.require(ctx, "patches", "sets")

meta = data.patches(ctx.root, ctx.stamp)
runs = data.runs(ctx.root, ctx.stamp) if ctx.status["runs"] and ctx.status["predictions"] else pd.DataFrame()
c1, c2, c3, c4 = st.columns([3, 1, 2, 3])
eset, output = ui.pick_set(ctx, "map", container=c1)
method = c2.selectbox("Projection", data.projection_methods(),
                      help="PCA of the standardised vectors; UMAP too when umap-learn is installed.")
colour_opts = ["label", "dataset"] + (["prediction", "correct"] if not runs.empty else [])
colour = c3.selectbox("Colour by", colour_opts, index=0)
datasets = c4.multiselect("Datasets", sorted(meta["dataset"].unique()), placeholder="all datasets")

proj = data.projection(ctx.root, ctx.stamp, eset.recipe_id, output, method)
df = proj.xy.merge(meta[["patch_id", "dataset", "split", "label", "votes"]], on="patch_id", how="left")
fid = None
if not runs.empty:
    same = runs.loc[runs["recipe_id"] == eset.recipe_id, "family_id"].unique().tolist()
    fid = ui.pick_family(runs, "map_family", "Predictions of (test sets only)", families=same)
    pred = data.family_predictions(ctx.root, ctx.stamp, fid, data.fold_choices(runs, fid)[0])
    df = df.merge(pred[["patch_id", "probability", "prediction"]], on="patch_id", how="left")
    df["prediction"] = df["prediction"].map({1: "Atypical", 0: "Normal"}).fillna("not predicted")
    has = df["prediction"] != "not predicted"
    df["correct"] = np.where(~has, "not predicted", np.where(df["prediction"] == df["label"], "correct", "wrong"))
if datasets:
    df = df[df["dataset"].isin(datasets)]
n_all = len(df)
if n_all > data.MAP_POINTS:  # a browser draws ~20,000 points fluently, not a cohort's 200,000
    df = df.sample(data.MAP_POINTS, random_state=0)

if proj.explained:
    st.caption(f"PCA of the standardised vectors: the two axes explain {proj.explained[0]:.1%} and "
               f"{proj.explained[1]:.1%} of the variance ({sum(proj.explained):.1%} together); the rest lies in "
               "directions this map cannot show.")
event = st.altair_chart(charts.scatter(df, colour, proj.axes), width="stretch", on_select="rerun", key="map_chart")
selection = (event or {}).get("selection", {}) if event else {}
clicked = [p.get("patch_id") for p in (selection.get("clicked") or []) if isinstance(p, dict)]
shown_ids = set(df["patch_id"])
clicked = [p for p in clicked if p in shown_ids]
if clicked:
    pid = clicked[0]
    r = df.set_index("patch_id").loc[pid]
    l1, l2, l3 = st.columns([2, 2, 4])
    links.page_link(l1, "similarity", f"Similarity query: {pid}", patch=pid, set=eset.recipe_id, family=fid)
    links.page_link(l2, "patch", f"Patch viewer: {pid}", patch=pid, set=eset.recipe_id, family=fid)
    l3.caption(f"Clicked: {r['label']} · {r['dataset']} {r['split']} (double-click the map to clear)")
sel = selection.get("picked")
picked = df
if sel:
    x0, x1 = sel.get("x", [-np.inf, np.inf])
    y0, y1 = sel.get("y", [-np.inf, np.inf])
    picked = df[df["x"].between(min(x0, x1), max(x0, x1)) & df["y"].between(min(y0, y1), max(y0, y1))]
    st.markdown(f"**{len(picked)} patches selected**" + (" (showing 36)" if len(picked) > 36 else "")
                + ". Click one to open it as the similarity query.")
else:
    drawn = f"{n_all} patches ({len(df)} drawn at random: the projection uses all)" if n_all > len(df) \
        else f"{len(df)} patches"
    st.caption(f"{drawn}. Showing 12 at random (click one to search with it); select a region to see its patches.")
    picked = df.sample(min(12, len(df)), random_state=0)
show = picked.head(36)
ui.thumbnail_grid(ctx, show["patch_id"].tolist(), [f"{r['label']}\n{r['dataset']}" for _, r in show.iterrows()],
                  size=96, set=eset.recipe_id, family=fid)

st.subheader("Do neighbours follow the label or the site?")
st.caption("For every patch, its k nearest neighbours in this set (cosine, per-dimension z-scored with AMi-Br "
           "train statistics; all outputs, original view; site = dataset) are counted as *same label, other site* "
           "or *other label, same site*. The robustness index is their ratio SL-OS / (SL-OS + OL-SS): 1 = "
           "neighbours follow the label regardless of site, 0 = they follow the site. Agreements mean little "
           "unless they clear their base rates (what random neighbours would give).")
k_rob = st.slider("Neighbours per patch (k)", 5, 50, 10, 1, key="map_robust_k")
try:
    rob = data.site_robustness(ctx.root, ctx.stamp, eset.recipe_id, eset.name, k_rob)
except MitoprobeError as exc:
    st.info(f"No robustness index for set {eset.name} · {eset.recipe_id}: {exc}")
else:
    r1, r2, r3 = st.columns(3)
    r1.metric("Robustness index", f"{rob['robustness_index']:.3f}",
              help="SL-OS / (SL-OS + OL-SS): 1 = neighbours follow the label, 0 = they follow the site")
    r2.metric("Label agreement", f"{rob['label_agreement']:.3f}",
              delta=f"{rob['label_agreement'] - rob['label_base_rate']:+.3f} vs base rate {rob['label_base_rate']:.3f}",
              delta_color="off", help="Share of neighbours with the patch's label; base rate = random neighbours")
    r3.metric("Site agreement", f"{rob['site_agreement']:.3f}",
              delta=f"{rob['site_agreement'] - rob['site_base_rate']:+.3f} vs base rate {rob['site_base_rate']:.3f}",
              delta_color="off", help="Share of neighbours from the patch's dataset; base rate = random neighbours")
    queried = f" ({rob['queries']} of them queried, a fixed random sample)" if rob["queries"] < rob["n"] else ""
    st.caption(f"{rob['n']} patches{queried}, k = {rob['k']}: {rob['sl_os']} same-label/other-site and {rob['ol_ss']} "
               f"other-label/same-site neighbour pairs (output {rob['output']}). "
               + ("The site pulls neighbours together more than the label does."
                  if rob["site_agreement"] - rob["site_base_rate"] > rob["label_agreement"] - rob["label_base_rate"]
                  else "The label pulls neighbours together more than the site does."))
