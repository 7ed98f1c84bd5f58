"""Patch viewer: one stored patch at 2–3× (nearest-neighbour), every expert's vote and subtype, a run
family's P(atypical) from each fold model beside its threshold, and the patch's nearest neighbours.

Reached from every other page (a selected error, a clicked map point, the similarity query) and by
URL: ``/patch?patch=<patch_id>&family=<family_id>&set=<recipe_id>``."""

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.dashboard import data, links, ui
from mitoprobe.store.errors import MitoprobeError
from mitoprobe.store.schema import VOTE_COLUMNS

ctx = ui.context()
st.title("Patch viewer")
ui.require(ctx, "patches")


def known(pid) -> bool:
    return not data.patch_rows(ctx.root, ctx.stamp, [pid]).empty


c1, c2 = st.columns([3, 1])
links.adopt("pv_patch", links.PATCH, valid=known)
st.session_state.setdefault("pv_patch", data.first_patch_id(ctx.root, ctx.stamp))
pid = c1.text_input("Patch id", key="pv_patch", help="Any stored patch id; links from the other pages fill it in.")
pid = (pid or "").strip()
links.publish(links.PATCH, "pv_patch", pid or None)
zoom = c2.segmented_control("Zoom", [2, 3], default=3, format_func=lambda z: f"{z}×", key="pv_zoom") or 3
if not known(pid):
    st.warning(f"No stored patch has id {pid!r}.")
    st.stop()
m = data.patch_rows(ctx.root, ctx.stamp, [pid]).set_index("patch_id").loc[pid]

img, info = st.columns([2, 3])
png = data.png(ctx.root, ctx.stamp, pid)
if png is not None:
    img.image(data.enlarged(png, zoom), width=128 * zoom,
              caption=f"128 × 128 px shown at {zoom}× (nearest neighbour: every pixel a square, nothing smoothed)")


def _value(v) -> str:
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


info.markdown(f"**{m['label']}** · {m['dataset']} {m['split']}  \n`{pid}`")
facts = {"dataset": m["dataset"], "split": m["split"], "label": m["label"], "slide": m["slide"],
         "experts voting": m["n_experts"], "duplicate group": m["duplicate_group"]}
info.table(pd.DataFrame({"": list(facts), "value": [_value(v) for v in facts.values()]}).set_index(""))
votes = [dict(expert=c.replace("_atypical", ""),
              vote="" if pd.isna(m[c]) else ("Atypical" if bool(m[c]) else "Normal"),
              subtype=_value(m.get(f"subtype_{c.replace('_atypical', '')}")))
         for c in VOTE_COLUMNS]
votes = [v for v in votes if v["vote"] or v["subtype"]]
info.markdown("**Expert votes and subtypes**")
if votes:
    info.table(pd.DataFrame(votes).set_index("expert"))
else:
    info.caption("No individual expert votes recorded for this patch (only its consensus label).")

st.subheader("Predictions")
runs = data.runs(ctx.root, ctx.stamp) if ctx.status["runs"] else pd.DataFrame()
fid = None
if runs.empty or not ctx.status["predictions"]:
    st.caption("No predictions stored yet (`mitoprobe probe`).")
else:
    fid = ui.pick_family(runs, "pv_family", "Run family")
    p = data.patch_predictions(ctx.root, ctx.stamp, fid, pid)
    if p.empty:
        st.info("This family has no stored prediction for this patch (a training patch without held-out "
                "predictions, or a dataset the family was not tested on).")
    else:
        said = p["prediction"].map({1: "Atypical", 0: "Normal"})
        p = p.assign(model=[data.fold_name(f) for f in p["fold"]], prediction=said, correct=said == m["label"])
        st.caption("Each fold model's P(atypical) and its decision threshold (P ≥ threshold → Atypical); "
                   "*held-out* rows are out-of-fold predictions on a training patch (what threshold selection saw).")
        st.dataframe(p.assign(split=p["split"].map({"test": "test", "val": "held-out"}).fillna(p["split"])),
                     hide_index=True, width="content",
                     column_order=["test_set", "split", "model", "probability", "threshold", "prediction", "correct"],
                     column_config={"probability": ui.PROB_COLUMN, "test_set": "test set",
                                    "threshold": st.column_config.NumberColumn("threshold", format="%.3f"),
                                    "correct": st.column_config.CheckboxColumn("correct")})

st.subheader("Nearest neighbours")
sets = data.embedding_sets(ctx.root)
if not sets:
    what, cmd = ui.NEXT_STEP["sets"]
    st.caption(f"{what} Run `{cmd} --store {ctx.root}` to see this patch's neighbours.")
    st.stop()
if fid is not None and "pv_set" not in st.session_state and not st.query_params.get(links.SET):
    rid = runs.loc[runs["family_id"] == fid, "recipe_id"].iloc[0]  # the family's own embedding set
    if any(s.recipe_id == rid for s in sets):
        st.session_state["pv_set"] = rid
n1, n2 = st.columns([3, 1])
eset, output = ui.pick_set(ctx, "pv", container=n1)
k = n2.slider("Neighbours (k)", 4, 24, 12, 4, key="pv_k")
try:
    vec = data.stored_vector(ctx.root, ctx.stamp, eset.recipe_id, output, pid)
    if vec is None:
        st.info(f"Patch {pid} is not in set {eset.name}.")
        st.stop()
    hits = data.neighbours(ctx.root, ctx.stamp, eset.recipe_id, output, np.asarray(vec, np.float32).tobytes(), k,
                           not_id=pid)
except MitoprobeError as exc:
    st.error(f"Cannot search set {eset.name}: {exc}")
    st.stop()
hits = hits.merge(data.patch_rows(ctx.root, ctx.stamp, hits["patch_id"]), on="patch_id", how="left")
ui.thumbnail_grid(ctx, hits["patch_id"].tolist(), [f"{h['label']}\n{h['dataset']}" for _, h in hits.iterrows()],
                  set=eset.recipe_id, family=fid)
st.caption(f"{(hits['label'] == m['label']).mean():.0%} share this patch's label. Click a neighbour to search with "
           "it, or open this patch as the query:")
links.page_link(st, "similarity", f"Similarity search with {pid}", patch=pid, set=eset.recipe_id, family=fid)
