"""Similarity search: the k nearest stored mitoses to a patch (or an uploaded PNG), via LanceDB."""

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.dashboard import data, links, ui
from mitoprobe.store.errors import MitoprobeError

ctx = ui.context()
st.title("Similarity search")
st.caption("Nearest neighbours in one embedding set (LanceDB) by cosine distance between standardised vectors "
           "(each dimension z-scored with the AMi-Br train patches' mean and std, so no one feature's scale "
           "dominates), with labels, expert votes and a run's predictions. *Closer than* is the share of the "
           "set's stored patches that lie farther from the query: raw distances are not comparable across sets.")
ui.require(ctx, "patches", "sets")

UNLABELLED = "unlabelled"  # a lab's cohort may leave labels empty: a label of its own here (sorts, filters, captions)


def labelled(labels: pd.Series) -> pd.Series:
    """Labels with an empty one shown as ``UNLABELLED`` (a new series: the index frames are shared)."""
    if isinstance(labels.dtype, pd.CategoricalDtype) and UNLABELLED not in labels.cat.categories:
        labels = labels.cat.add_categories([UNLABELLED])
    return labels.fillna(UNLABELLED).astype(str)


def rows_of(patch_ids) -> pd.DataFrame:
    """The shown metadata of just these patches (never every patch's row), labels filled."""
    return data.patch_rows(ctx.root, ctx.stamp, patch_ids).assign(label=lambda d: labelled(d["label"]))

c1, c2, c3 = st.columns([3, 2, 2])
eset, output = ui.pick_set(ctx, "sim", container=c1)
k = c2.slider("Neighbours (k)", 4, 48, data.SIMILARITY_K, 4)
x1, x2 = c2.columns(2)
skip_slide = x1.toggle("Not its slide", key="sim_skip_slide",
                       help="Leave out neighbours from the query's own slide (same dataset and slide).")
skip_dataset = x2.toggle("Not its dataset", key="sim_skip_dataset",
                         help="Leave out neighbours from the query's dataset: do neighbours hold across sites?")
runs = data.runs(ctx.root, ctx.stamp) if ctx.status["runs"] else pd.DataFrame()
pred = pd.DataFrame(columns=["patch_id", "probability", "threshold", "prediction"])
fid = None
if not runs.empty and ctx.status["predictions"]:
    same = data.set_families(runs, eset.recipe_id)
    fid = ui.pick_family(runs, "sim_family", "Predictions of", families=same, container=c3)
    fold = data.fold_choices(runs, fid)[0]
    pred = data.family_predictions(ctx.root, ctx.stamp, fid, fold)[["patch_id", "probability", "threshold",
                                                                    "prediction"]]
    thr = sorted(pred["threshold"].dropna().unique())
    c3.caption(f"{data.fold_name(fold)}, decision threshold "
               + (" / ".join(f"{t:.3f}" for t in thr) if len(thr) <= 3 else f"{thr[0]:.3f}–{thr[-1]:.3f}")
               + " (P(atypical) ≥ threshold → Atypical)")
else:
    c3.caption("No predictions stored yet (`mitoprobe probe`).")

in_set = data.set_patches(ctx.root, ctx.stamp, eset.recipe_id)  # the patches a search can return (shared)
in_set_label = labelled(in_set["label"]).to_numpy()

MODES = ["Stored patch", "Upload a PNG"]
if st.query_params.get(links.PATCH) and links.adopt("sim_query_id", links.PATCH,
                                                    valid=lambda pid: not rows_of([pid]).empty):
    st.session_state["sim_mode"] = MODES[0]  # a link to a patch: search with it
mode = st.radio("Query", MODES, horizontal=True, label_visibility="collapsed", key="sim_mode")
query_vec, query_id, query_png = None, None, None
if mode == "Stored patch":
    g1, g2, g3, g4 = st.columns([2, 2, 1, 3])
    ds = g1.selectbox("Gallery: dataset", ["all", *sorted(in_set["dataset"].dropna().unique())])
    lab = g2.selectbox("Gallery: label", ["all", *sorted(set(in_set_label))])
    if g3.button("Shuffle", help="Show other patches in the gallery"):
        st.session_state["sim_seed"] = st.session_state.get("sim_seed", 0) + 1
    keep = np.ones(len(in_set), bool)
    if ds != "all":
        keep &= (in_set["dataset"] == ds).to_numpy()
    if lab != "all":
        keep &= in_set_label == lab
    drawn = data.gallery(ctx.root, ctx.stamp, in_set["patch_id"][keep], data.GALLERY_SIZE,
                         st.session_state.get("sim_seed", 0),
                         groups=data.set_row_groups(ctx.root, ctx.stamp, eset.recipe_id)[keep])
    gallery = rows_of(drawn).set_index("patch_id").loc[drawn].reset_index()
    if "sim_query_id" not in st.session_state and len(gallery):
        st.session_state["sim_query_id"] = gallery["patch_id"].iloc[0]
    g4.text_input("Patch id", key="sim_query_id", help="Type a patch id, or pick one from the gallery below.")

    def _pick(pid: str) -> None:
        st.session_state["sim_query_id"] = pid

    cols = st.columns(data.GALLERY_SIZE)
    for col, (_, r), url in zip(cols, gallery.iterrows(),
                                data.thumbnails(ctx.root, ctx.stamp, gallery["patch_id"].tolist())):
        col.image(url, width="stretch", caption=r["label"])
        col.button("Search", key=f"pick_{r['patch_id']}", on_click=_pick, args=(r["patch_id"],),
                   help=f"{r['dataset']} {r['split']} · {r['patch_id']}",
                   width="stretch", type="primary" if r["patch_id"] == st.session_state.get("sim_query_id")
                   else "secondary")
    query_id = (st.session_state.get("sim_query_id") or "").strip()
    links.publish(links.PATCH, "sim_query_id", query_id or None)
    try:  # read from the set's LanceDB table: a table built by an older mitoprobe says how to fix it
        query_vec = data.stored_vector(ctx.root, ctx.stamp, eset.recipe_id, output, query_id) if query_id else None
    except MitoprobeError as exc:
        st.error(f"Cannot search set {eset.name}: {exc}")
        st.stop()
    if query_vec is None:
        st.warning(f"Patch id {query_id!r} is not in set {eset.name}; pick one from the gallery.")
        st.stop()
    query_png = data.png(ctx.root, ctx.stamp, query_id)
else:
    links.publish(links.PATCH, "sim_query_id", None)
    up = st.file_uploader("A 128×128 RGB PNG of a mitotic figure", type=["png"])
    if up is None:
        st.info(f"Upload a PNG; it will be embedded on the fly with the set's recipe ({eset.name}).")
        st.stop()
    try:  # the import's own checks: a PNG, within the pixel limit, 128x128, 8-bit RGB
        upload = data.check_upload(ctx.root, ctx.stamp, up.getvalue(), name=f"upload {up.name!r}")
    except MitoprobeError as exc:
        st.error(f"Cannot search with this upload: {exc}")
        st.stop()
    query_png = upload.png
    if upload.note:
        st.caption(upload.note)
    if upload.same_as:
        same = rows_of(upload.same_as).set_index("patch_id").reindex(upload.same_as)
        st.info("This upload is stored patch " + ", ".join(
            f"`{pid}` ({r['dataset']} {r['split']}, {r['label']})" for pid, r in same.iterrows())
            + ": it is its own nearest neighbour (distance 0) below.")
    try:
        query_vec = data.embed_png(ctx.root, eset, output, query_png)
    except (MitoprobeError, ImportError, OSError, ValueError) as exc:
        st.error(f"Cannot embed the upload with {eset.name} here: {exc}")
        st.caption("Similarity search over stored patches still works: choose 'Stored patch'.")
        st.stop()

# the stored patch the filters refer to: the query, or the stored patch an upload repeats
ref_id = query_id or (upload.same_as[0] if upload.same_as else None)
excluded = pd.Series(False, index=in_set.index)
notes = []
if ref_id and (skip_slide or skip_dataset):
    ref = rows_of([ref_id]).set_index("patch_id").loc[ref_id]
    if skip_dataset:
        excluded |= in_set["dataset"] == ref["dataset"]
        notes.append(f"dataset {ref['dataset']}")
    if skip_slide:
        if pd.isna(ref["slide"]):
            st.caption(f"The query's slide is not recorded ({ref['dataset']}): no slide to exclude.")
        else:
            excluded |= (in_set["dataset"] == ref["dataset"]) & (in_set["slide"] == ref["slide"])
            notes.append(f"slide {ref['slide']}")
elif skip_slide or skip_dataset:
    st.caption("The upload is not a stored patch, so it has no slide or dataset to exclude.")
pool_label = in_set_label[(~excluded & (in_set["patch_id"] != query_id)).to_numpy()]  # those a neighbour may be
try:  # a table built by an older mitoprobe has no standardised columns: the store says how to fix it
    hits = data.neighbours(ctx.root, ctx.stamp, eset.recipe_id, output, np.asarray(query_vec, np.float32).tobytes(),
                           k, not_id=query_id or None, like=ref_id, not_slide=skip_slide, not_dataset=skip_dataset)
    closer = data.distance_percentiles(ctx.root, ctx.stamp, eset.recipe_id, output, query_vec, hits["distance"],
                                       exclude=[query_id] if query_id else [])
except MitoprobeError as exc:
    st.error(f"Cannot search set {eset.name}: {exc}")
    st.stop()
hits = hits.merge(rows_of(hits["patch_id"]), on="patch_id", how="left").merge(pred, on="patch_id", how="left")
hits.insert(0, "rank", np.arange(1, len(hits) + 1))
hits["closer_than"] = closer
hits["prediction"] = hits["prediction"].map({1: "Atypical", 0: "Normal"})

q, res = st.columns([1, 5])
q.markdown("**Query**")
if query_png is not None:
    q.image(query_png, width="stretch")
res.markdown(f"**{len(hits)} nearest** in {eset.name} · {output}"
             + (f", excluding the query's {' and '.join(notes)}" if notes else ""))
if query_id:
    m = rows_of([query_id]).set_index("patch_id").loc[query_id]
    q.caption(f"`{query_id}`  \n{m['label']} · {m['dataset']} {m['split']}  \nvotes: {m['votes'] or '–'}")
    links.page_link(q, "patch", "Patch viewer", help="The patch at full size with every vote and prediction",
                    patch=query_id, set=eset.recipe_id, family=fid)
    base = (pool_label == m["label"]).mean() if len(pool_label) else float("nan")
    res.caption(f"{(hits['label'] == m['label']).mean():.0%} of the neighbours share the query's label "
                f"(base rate {base:.0%}: the share of {m['label']} among the {len(pool_label)} patches searched).")
else:
    q.caption("uploaded image")
ui.thumbnail_grid(ctx, hits["patch_id"].tolist(),
                  [f"#{h['rank']} · {h['label']}\n{h['dataset']} · closer than {h['closer_than']:.1f}%"
                   + ("" if pd.isna(h["probability"]) else f"\nP(atypical) {h['probability']:.2f}")
                   for _, h in hits.iterrows()], container=res, set=eset.recipe_id, family=fid)
res.caption("Click a neighbour to search with it.")

# folded: the grid above shows what most look at, and an unfolded table took ~0.3 s of every render at 200,000
# patches on two cores (docs/benchmarks.md, "Cohort scale, round 6")
st.expander(f"The {len(hits)} neighbours as a table: distance, prediction, votes, subtypes").dataframe(
    hits.assign(open=ui.query_links(hits["patch_id"], set=eset.recipe_id, family=fid)),  # thumbnails: the grid above
    hide_index=True, width="stretch", placeholder="",
    column_order=["rank", "closer_than", "distance", "label", "prediction", "probability", "threshold",
                  "dataset", "split", "votes", "subtype_expert1", "subtype_expert2", "open"],
    column_config={"probability": ui.PROB_COLUMN, "open": ui.QUERY_LINK_COLUMN,
                   "closer_than": st.column_config.NumberColumn(
                       "closer than", format="%.1f%%",
                       help="Share of the set's stored patches farther from the query than this one"),
                   "threshold": st.column_config.NumberColumn(
                       "threshold", format="%.3f",
                       help="The family's decision threshold: P(atypical) ≥ it → Atypical"),
                   "distance": st.column_config.NumberColumn(
                       "distance", format="%.4f", help="Cosine distance between standardised vectors"),
                   "votes": st.column_config.TextColumn("expert votes", help="A = atypical, N = normal")})
