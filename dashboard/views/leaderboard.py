"""Leaderboard: every run family by test set, beside the paper's published rows."""

import streamlit as st

from dashboard import data, ui

ctx = ui.context()
st.title("Leaderboard")
st.caption("Balanced accuracy and AUROC on the three test sets: mean ± std over the five CV fold models, "
           "and the 95% bootstrap CI of the fold ensemble. Rows with source *paper* are the published numbers "
           "(Banerjee, Bertram et al. 2025).")
ui.require(ctx, "patches")

board = data.leaderboard(ctx.root, ctx.stamp)
if not ctx.status["runs"]:
    what, cmd = ui.NEXT_STEP["runs"]
    st.info(f"{what} Only the paper's rows are shown. Run this next: `{cmd} --store {ctx.root}`")

c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
models = c1.multiselect("Model", sorted(board["model"].dropna().unique()), placeholder="all models")
heads = c2.multiselect("Head", sorted(board["head"].dropna().unique()), placeholder="all heads")
test_sets = c3.multiselect("Test set", sorted(board["test_set"].dropna().unique()), placeholder="all test sets")
show_paper = c4.toggle("Paper rows", value=True)

view = board
if models:
    view = view[view["model"].isin(models)]
if heads:
    view = view[view["head"].isin(heads)]
if test_sets:
    view = view[view["test_set"].isin(test_sets)]
if not show_paper:
    view = view[view["source"] != "paper"]
view = view.sort_values(["test_set", "balanced_accuracy_mean"], ascending=[True, False], kind="mergesort")

ours = view[view["source"] == "mitoprobe"]
if not ours.empty:
    best = ours.loc[ours.groupby("test_set")["balanced_accuracy_mean"].idxmax()]
    cols = st.columns(len(best))
    for col, (_, b) in zip(cols, best.iterrows()):
        col.metric(f"Best on {b['test_set']}", f"{b['balanced_accuracy_mean']:.3f}",
                   help=f"balanced accuracy of {b['label']}")
        col.caption(b["label"])

num = lambda title, help=None: st.column_config.NumberColumn(title, format="%.3f", help=help)  # noqa: E731
st.dataframe(
    view, hide_index=True, width="stretch", height=min(36 * (len(view) + 1) + 4, 640),
    column_order=["source", "model", "head", "options", "test_set", "balanced_accuracy_mean",
                  "balanced_accuracy_std", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "auroc_mean",
                  "auroc_std", "auroc_ci_low", "auroc_ci_high", "n_folds"],
    column_config={
        "source": st.column_config.TextColumn("source", width="small"),
        "test_set": "test set",
        "options": st.column_config.TextColumn("options", width="small"),
        "balanced_accuracy_mean": num("BA mean", "balanced accuracy, mean over folds"),
        "balanced_accuracy_std": num("BA std"),
        "balanced_accuracy_ci_low": num("BA CI low", "95% bootstrap CI of the fold ensemble"),
        "balanced_accuracy_ci_high": num("BA CI high"),
        "auroc_mean": num("AUROC mean"),
        "auroc_std": num("AUROC std"),
        "auroc_ci_low": num("AUROC CI low"),
        "auroc_ci_high": num("AUROC CI high"),
        "n_folds": st.column_config.NumberColumn("folds", width="small"),
    },
)
st.download_button("Download CSV", view.drop(columns=["label"]).to_csv(index=False).encode(),
                   file_name="mitoprobe_leaderboard.csv", mime="text/csv")
