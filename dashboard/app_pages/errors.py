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

if wrong.empty:
    st.success("No misclassified patches here.")
    st.stop()

st.subheader("Where the errors are")
st.caption(f"All {len(p)} patches of {test_set}, grouped; *errors* sum to the {len(wrong)} misclassified. "
           "A subtype is an expert's label (AMF = atypical, NMF = normal mitotic figure); (none) = not recorded.")


def _table(container, df, first: dict) -> None:
    df = df.rename(columns={**first, "fn": "missed (FN)", "fp": "false alarms (FP)", "error_rate": "error rate"})
    container.table(df.style.format({"error rate": "{:.0%}"}).hide(axis="index"))


s1, s2 = st.columns(2)
for col, e in ((s1, "1"), (s2, "2")):
    col.markdown(f"**By subtype (expert {e})**")
    _table(col, data.error_breakdown(p, [f"subtype_expert{e}"]), {f"subtype_expert{e}": "subtype"})
by_slide = data.error_breakdown(p, ["dataset", "slide"])
with st.expander(f"By slide ({len(by_slide)} in {test_set}; most errors first)"):
    _table(st, by_slide, {})

kind = st.segmented_control("Show", ["all", "missed atypical (FN)", "false alarm (FP)"], default="all")
if kind and kind != "all":
    wrong = wrong[wrong["error"] == kind]
if wrong.empty:
    st.success(f"No {kind} here.")
    st.stop()
what = "misclassified patches" if not kind or kind == "all" else kind
if len(wrong) > 1:
    limit = st.slider(f"Rows to show ({len(wrong)} {what} in all)", 1, len(wrong), min(40, len(wrong)), 1)
else:
    limit = 1
    st.caption(f"The only one of the {what}.")
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
                   file_name=data.errors_file_name(ui.family_options(runs)[fid], fold, test_set),
                   mime="text/csv")
