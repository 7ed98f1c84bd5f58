"""Errors: the misclassified patches of one run, most confident mistakes first."""

import numpy as np
import streamlit as st

from classifiers import metrics
from dashboard import charts, data, ui

ctx = ui.context()
st.title("Errors")
st.caption("Patches a run got wrong at its decision threshold, ordered by how far the probability lies on the "
           "wrong side of it (worst first).")
ui.require(ctx, "patches", "runs", "predictions")

runs = data.runs(ctx.root, ctx.stamp)
c1, c2, c3 = st.columns([4, 2, 3])
fid = ui.pick_family(runs, "err_family", container=c1)
fold = ui.pick_fold(runs, fid, "err_fold", container=c2)
test_set = c3.radio("Test set", charts.TEST_SET_ORDER, horizontal=True)

p = data.family_predictions(ctx.root, ctx.stamp, fid, fold, test_set)
if p.empty:
    st.info(f"No {data.fold_name(fold)} predictions on {test_set} for this family.")
    st.stop()
wrong = p[p["prediction"] != p["y"]].copy()
wrong["margin"] = np.abs(wrong["probability"] - wrong["threshold"])
wrong = wrong.sort_values("margin", ascending=False, kind="mergesort")
wrong["error"] = np.where(wrong["y"] == 1, "missed atypical (FN)", "false alarm (FP)")

cm = metrics.confusion_counts(p["y"].to_numpy(), p["prediction"].to_numpy())
m1, m2, m3, m4 = st.columns(4)
m1.metric("Misclassified", f"{len(wrong)} / {len(p)}")
m2.metric("Missed atypical (FN)", cm["fn"])
m3.metric("False alarms (FP)", cm["fp"])
m4.metric("Threshold", f"{float(p['threshold'].iloc[0]):.3f}")

kind = st.segmented_control("Show", ["all", "missed atypical (FN)", "false alarm (FP)"], default="all")
if kind and kind != "all":
    wrong = wrong[wrong["error"] == kind]
if wrong.empty:
    st.success("No misclassified patches here.")
    st.stop()
limit = st.slider("Rows", 10, 200, 40, 10)
shown = ui.with_thumbnails(ctx, wrong.head(limit))
st.dataframe(
    shown, hide_index=True, width="stretch", row_height=72, height="auto" if len(shown) <= 10 else 800,
    placeholder="",  # no subtype / duplicate group: an empty cell, not "None"
    column_order=["thumbnail", "error", "probability", "label", "votes", "subtype_expert1", "subtype_expert2",
                  "dataset", "slide", "duplicate_group", "patch_id"],
    column_config={"thumbnail": ui.THUMB_COLUMN, "probability": ui.PROB_COLUMN,
                   "votes": st.column_config.TextColumn("expert votes", help="A = atypical, N = normal"),
                   "subtype_expert1": "subtype (expert 1)", "subtype_expert2": "subtype (expert 2)"})
st.download_button("Download all errors (CSV)", wrong.drop(columns=["margin"]).to_csv(index=False).encode(),
                   file_name=f"errors_{test_set}.csv", mime="text/csv")
