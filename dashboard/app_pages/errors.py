"""Errors: the misclassified patches of one run, most confident mistakes first."""

import numpy as np
import streamlit as st

from mitoprobe.classifiers import metrics
from mitoprobe.dashboard import data, links, ui

ctx = ui.context()
st.title("Errors")
st.caption("Patches a run got wrong at its decision threshold, ordered by how far the probability lies on the "
           "wrong side of it (worst first).")
ui.require(ctx, "patches", "runs", "predictions")
ROWS = 20  # shown at first: each row's thumbnail costs the browser a redraw; the slider shows more

runs = data.runs(ctx.root, ctx.stamp)
c1, c2, c3 = st.columns([4, 2, 3])
fid = ui.pick_family(runs, "err_family", container=c1)
fold = ui.pick_fold(runs, fid, "err_fold", container=c2)
test_set = ui.pick_test_set(data.test_sets(ctx.root, ctx.stamp), "err_test_set", container=c3)

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
    """A breakdown as a (virtualised) dataframe: HTML tables of dozens of slides cost the browser more."""
    df = df.rename(columns={**first, "fn": "missed (FN)", "fp": "false alarms (FP)", "error_rate": "error rate"})
    container.dataframe(df, hide_index=True, width="stretch", height=min(35 * (len(df) + 1) + 3, 400),
                        placeholder="", column_config={"error rate": st.column_config.NumberColumn(
                            "error rate", format="percent")})


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
    limit = st.slider(f"Rows to show ({len(wrong)} {what} in all)", 1, len(wrong), min(ROWS, len(wrong)), 1)
else:
    limit = 1
    st.caption(f"The only one of the {what}.")
shown = ui.with_thumbnails(ctx, wrong.head(limit)).reset_index(drop=True)
recipe = runs.loc[runs["family_id"] == fid, "recipe_id"].iloc[0]  # neighbours in the family's own embedding set
shown["open"] = ui.query_links(shown["patch_id"], set=recipe, family=fid)
st.caption("Select a row to open its patch in the patch viewer or as the similarity query; the *patch id* "
           "links open it as the query in a new tab.")
event = st.dataframe(
    shown, hide_index=True, width="stretch", row_height=72, height="auto" if len(shown) <= 10 else 800,
    placeholder="",  # no subtype / duplicate group: an empty cell, not "None"
    on_select="rerun", selection_mode="single-row", key="err_table",
    column_order=["thumbnail", "error", "probability", "label", "votes", "subtype_expert1", "subtype_expert2",
                  "dataset", "slide", "duplicate_group", "open"],
    column_config={"thumbnail": ui.THUMB_COLUMN, "probability": ui.PROB_COLUMN, "open": ui.QUERY_LINK_COLUMN,
                   "votes": st.column_config.TextColumn("expert votes", help="A = atypical, N = normal"),
                   "subtype_expert1": "subtype (expert 1)", "subtype_expert2": "subtype (expert 2)"})
picked = [r for r in (event.selection.rows if event else []) if r < len(shown)]
if picked:
    pid = shown["patch_id"].iloc[picked[0]]
    l1, l2, _ = st.columns([2, 2, 4])
    links.page_link(l1, "patch", f"Patch viewer: {pid}", patch=pid, family=fid, set=recipe)
    links.page_link(l2, "similarity", f"Similarity query: {pid}", patch=pid, family=fid, set=recipe)
st.download_button("Download all errors (CSV)", wrong.drop(columns=["margin"]).to_csv(index=False).encode(),
                   file_name=data.errors_file_name(data.family_options(runs)[fid], fold, test_set),
                   mime="text/csv")
