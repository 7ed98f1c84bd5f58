"""Embedding map: a 2-D projection of one embedding set, coloured by label, dataset or a run's results, and
the set's site-robustness index. Both are read from the views ``mitoprobe embed`` stores with the set
(``dashboard/derived_views.py``): a missing or stale one is never computed on open; the page says so and
offers to build it."""

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.dashboard import charts, data, derived_views, links, ui
from mitoprobe.store.derived import K_MAX, K_MIN
from mitoprobe.store.errors import MitoprobeError

ctx = ui.context()
st.title("Embedding map")
st.caption("Each dot is one patch (original view). Drag a rectangle on the map to see the patches inside it, or "
           "click one patch to open it as the similarity query.")
ui.require(ctx, "patches", "sets")

runs = data.runs(ctx.root, ctx.stamp) if ctx.status["runs"] and ctx.status["predictions"] else pd.DataFrame()
c1, c2, c3, c4 = st.columns([3, 1, 2, 3])
eset, output = ui.pick_set(ctx, "map", container=c1)
method = c2.selectbox("Projection", derived_views.methods(),
                      help="PCA of the standardised vectors, stored with the set; UMAP too when umap-learn is "
                           "installed (computed on demand, not stored).")
points = c2.selectbox("Points drawn", sorted({data.MAP_POINTS, *data.MAP_POINT_CHOICES}),
                      index=sorted({data.MAP_POINTS, *data.MAP_POINT_CHOICES}).index(data.MAP_POINTS),
                      format_func="{:,}".format, key="map_points",
                      help="At most this many patches are drawn (a fixed random sample of those shown: the "
                           "projection uses all); more takes the browser longer to draw.")
colour_opts = ["label", "dataset"] + (["prediction", "correct"] if not runs.empty else [])
colour = c3.selectbox("Colour by", colour_opts, index=0, key="map_colour")
datasets = c4.multiselect("Datasets", sorted(data.set_patches(ctx.root, ctx.stamp, eset.recipe_id)["dataset"]
                                              .dropna().unique()), placeholder="all datasets")


def offer_build(missing: dict) -> None:
    """Say which stored views cannot be shown and why, with a button that builds them now."""
    what = "; the ".join(f"{name} is {v.state}: {v.why}" for name, v in missing.items())
    st.warning(f"Set {eset.name} · {eset.recipe_id}: the {what}.")
    if st.button("Build them now", key="map_build", help="What `mitoprobe embed` does at its end: the PCA map of "
                 "each output and the robustness index for every k (seconds; minutes on a large set)."):
        try:
            with st.spinner("Building the map and the robustness index…"):
                derived_views.build(ctx.root, eset.recipe_id)
        except MitoprobeError as exc:
            st.error(f"Cannot build them: {exc}")
        else:
            st.rerun()
    st.caption(f"`mitoprobe embed --model {eset.name} --store {ctx.root}` builds them too: every embedding job "
               "does at its end (a set embedded by an older mitoprobe has none yet).")


def draw_map(proj: derived_views.View) -> None:
    """The map (at most ``points`` drawn), what was clicked or selected, thumbnails."""
    df = derived_views.map_frame(ctx.root, ctx.stamp, proj)  # shared: filtered and sampled, never modified
    if datasets:
        df = df[df["dataset"].isin(datasets)]
    n_all = len(df)
    df = derived_views.drawn(df, points)
    df = df.assign(label=df["label"].astype(object), dataset=df["dataset"].astype(object),
                   split=df["split"].astype(object))
    fid = None
    if not runs.empty:  # joined to the drawn points only
        same = data.set_families(runs, eset.recipe_id)
        fid = ui.pick_family(runs, "map_family", "Predictions of (test sets only)", families=same)
        pred = data.family_predictions(ctx.root, ctx.stamp, fid, data.fold_choices(runs, fid)[0])
        df = df.merge(pred[["patch_id", "probability", "prediction"]], on="patch_id", how="left")
        df["prediction"] = df["prediction"].map({1: "Atypical", 0: "Normal"}).fillna("not predicted")
        has = df["prediction"] != "not predicted"
        df["correct"] = np.where(~has, "not predicted", np.where(df["prediction"] == df["label"], "correct", "wrong"))

    if proj.explained:
        basis = proj.manifest["basis"]
        fitted = (f"fitted on all {basis['fit_of']} patches" if basis["fit_rows"] == basis["fit_of"] else
                  f"fitted on a random {basis['fit_rows']} of the {basis['fit_of']} patches the set had then")
        added = proj.info.get("added", 0)
        st.caption(f"PCA of the standardised vectors ({fitted}"
                   + (f"; the {added} patches embedded since are projected onto the same axes" if added else "")
                   + f"): the two axes explain {proj.explained[0]:.1%} and {proj.explained[1]:.1%} of the variance "
                   f"({sum(proj.explained):.1%} together); the rest lies in directions this map cannot show.")
    event = st.altair_chart(charts.scatter(df, colour, proj.axes), width="stretch", on_select="rerun",
                            key="map_chart")
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
        count = f"{n_all} patches ({len(df)} drawn at random: the projection uses all)" if n_all > len(df) \
            else f"{len(df)} patches"
        st.caption(f"{count}. Showing {data.MAP_GALLERY_SIZE} drawn at random from one stored block of patches "
                   "(click one to search with it); select a region to see its patches.")
        picked = df.set_index("patch_id").loc[data.gallery(ctx.root, ctx.stamp, df["patch_id"], data.MAP_GALLERY_SIZE,
                                                           seed=0)].reset_index()
    show = picked.head(36)
    ui.thumbnail_grid(ctx, show["patch_id"].tolist(), [f"{r['label']}\n{r['dataset']}" for _, r in show.iterrows()],
                      size=96, set=eset.recipe_id, family=fid)


def robustness_section(rob: derived_views.View) -> None:
    st.subheader("Do neighbours follow the label or the site?")
    st.caption("For every labelled patch, its k nearest labelled neighbours in this set (cosine, per-dimension "
               "z-scored with AMi-Br train statistics; all outputs, original view; site = dataset; every dataset, "
               "whatever the map shows) are counted as *same label, other site* or *other label, same site*. The "
               "robustness index is their ratio SL-OS / (SL-OS + OL-SS): 1 = neighbours follow the label "
               "regardless of site, 0 = they follow the site. Agreements mean little unless they clear their base "
               "rates (what random neighbours would give).")
    k_rob = st.slider("Neighbours per patch (k)", K_MIN, K_MAX, 10, 1, key="map_robust_k")
    if rob.frame is None:
        return  # said above, with the button
    info = rob.info
    if info.get("reason"):
        st.info(f"No robustness index for set {eset.name} · {eset.recipe_id}: {info['reason']}.")
        return
    if k_rob not in rob.frame.index:
        st.info(f"k = {k_rob} needs more labelled patches than this set has: at most k = {rob.frame.index.max()}.")
        return
    r = rob.frame.loc[k_rob]
    r1, r2, r3 = st.columns(3)
    r1.metric("Robustness index", f"{r['robustness_index']:.3f}",
              help="SL-OS / (SL-OS + OL-SS): 1 = neighbours follow the label, 0 = they follow the site")
    r2.metric("Label agreement", f"{r['label_agreement']:.3f}",
              delta=f"{r['label_agreement'] - r['label_base_rate']:+.3f} vs base rate {r['label_base_rate']:.3f}",
              delta_color="off", help="Share of neighbours with the patch's label; base rate = random neighbours")
    r3.metric("Site agreement", f"{r['site_agreement']:.3f}",
              delta=f"{r['site_agreement'] - r['site_base_rate']:+.3f} vs base rate {r['site_base_rate']:.3f}",
              delta_color="off", help="Share of neighbours from the patch's dataset; base rate = random neighbours")
    queried = f" ({int(r['queries'])} of them queried, a fixed random sample)" if r["queries"] < r["n"] else ""
    left_out = f" ({info['unlabelled']} unlabelled patches left out)" if info.get("unlabelled") else ""
    st.caption(f"{int(r['n'])} labelled patches{left_out}{queried}, k = {k_rob}: {int(r['sl_os'])} "
               f"same-label/other-site and {int(r['ol_ss'])} other-label/same-site neighbour pairs (output "
               f"{info.get('output')}). "
               + ("The site pulls neighbours together more than the label does."
                  if r["site_agreement"] - r["site_base_rate"] > r["label_agreement"] - r["label_base_rate"]
                  else "The label pulls neighbours together more than the site does."))


proj = (derived_views.projection(ctx.root, ctx.stamp, eset, output) if method == "PCA"
        else derived_views.umap_view(ctx.root, ctx.stamp, eset.recipe_id, output))
rob = derived_views.robustness(ctx.root, ctx.stamp, eset)
missing = {name: v for name, v in (("map", proj), ("robustness index", rob)) if v.state != "current"}
if missing:
    offer_build(missing)
if proj.frame is not None:
    draw_map(proj)
robustness_section(rob)
