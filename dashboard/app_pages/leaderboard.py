"""Leaderboard: every run family by test set, beside the paper's published rows."""

import streamlit as st

from dashboard import data, ui

ctx = ui.context()
st.title("Leaderboard")
st.caption("Balanced accuracy and AUROC on the three test sets: mean ± std over the five CV fold models, "
           "and the fold ensemble with its 95% bootstrap CI. Rows with source *paper* are the published "
           "numbers (Banerjee, Bertram et al. 2025).")
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
    view, hide_index=True, width="stretch", height=min(35 * (len(view) + 1) + 3, 640),
    column_order=["source", "model", "head", "pooling", "tta", "test_set", "balanced_accuracy_mean",
                  "balanced_accuracy_std", "auroc_mean", "auroc_std", "ensemble_balanced_accuracy",
                  "ensemble_balanced_accuracy_ci_low", "ensemble_balanced_accuracy_ci_high", "ensemble_auroc",
                  "ensemble_auroc_ci_low", "ensemble_auroc_ci_high", "oof_auroc", "kappa_experts_mean", "ece_mean",
                  "n_folds"],
    column_config={
        "source": st.column_config.TextColumn("source", width="small"),
        "test_set": "test set",
        "tta": st.column_config.CheckboxColumn("TTA", width="small"),
        "balanced_accuracy_mean": num("BA", "balanced accuracy, mean over the 5 fold models"),
        "balanced_accuracy_std": num("± BA", "standard deviation over the 5 fold models"),
        "auroc_mean": num("AUROC", "mean over the 5 fold models"),
        "auroc_std": num("± AUROC"),
        "ensemble_balanced_accuracy": num("ens. BA", "fold ensemble (mean probability of the 5 fold models)"),
        "ensemble_balanced_accuracy_ci_low": num("BA 95% CI low", "bootstrap CI of the fold ensemble"),
        "ensemble_balanced_accuracy_ci_high": num("BA 95% CI high"),
        "ensemble_auroc": num("ens. AUROC"),
        "ensemble_auroc_ci_low": num("AUROC 95% CI low"),
        "ensemble_auroc_ci_high": num("AUROC 95% CI high"),
        "oof_auroc": num("held-out AUROC", "AUROC of the stored out-of-fold probabilities on the training "
                         "slides (what selection saw), beside the test figures"),
        "kappa_experts_mean": num("κ experts", "Cohen's κ against each expert, averaged"),
        "ece_mean": num("ECE", "expected calibration error"),
        "n_folds": st.column_config.NumberColumn("folds", width="small"),
    },
)
st.download_button("Download CSV", view.drop(columns=["label"], errors="ignore").to_csv(index=False).encode(),
                   file_name="mitoprobe_leaderboard.csv", mime="text/csv")
