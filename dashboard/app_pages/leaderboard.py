"""Leaderboard: every run family by test set, beside the paper's published rows."""

import pandas as pd
import streamlit as st

from mitoprobe.classifiers import report
from mitoprobe.dashboard import data, links, ui

ctx = ui.context()
st.title("Leaderboard")
st.caption("Balanced accuracy (BA), AUROC, AUPRC and Brier score on the three test sets: mean ± std over the five "
           "CV fold models, and the fold ensemble with its 95% bootstrap CI. **Δ vs paper** is our mean BA minus "
           "the best published row of the same family on the same test set (probe: the paper's linear probe; "
           "finetune: LoRA or end-to-end). Grey rows are the paper's published numbers (Banerjee, Bertram et al. "
           "2025); atypical prevalence is ~10–22%, so AUPRC is the figure to watch beside AUROC.")
ui.require(ctx, "patches")

board = report.add_delta_vs_paper(data.leaderboard(ctx.root, ctx.stamp))
if not ctx.status["runs"]:
    what, cmd = ui.NEXT_STEP["runs"]
    st.info(f"{what} Only the paper's rows are shown. Run this next: `{cmd} --store {ctx.root}`")

c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
models = c1.multiselect("Model", sorted(board["model"].dropna().unique()), placeholder="all models")
heads = c2.multiselect("Head", sorted(board["head"].dropna().unique()), placeholder="all heads")
test_sets = c3.multiselect("Test set", sorted(board["test_set"].dropna().unique()), placeholder="all test sets")
show_paper = c4.toggle("Paper rows", value=True)
compact = c4.toggle("Compact", value=False, help="One row per model · head, one column per test set: mean "
                    "balanced accuracy, the best of each column highlighted.")

view = board
if models:
    view = view[view["model"].isin(models)]
if heads:
    view = view[view["head"].isin(heads)]
if test_sets:
    view = view[view["test_set"].isin(test_sets)]
if not show_paper:
    view = view[view["source"] != "paper"]
# grouped: per test set, our rows first (best first), then the paper's rows (best first)
order = {t: i for i, t in enumerate(data.test_set_order(board["test_set"].unique()))}
view = view.assign(_t=view["test_set"].map(order).fillna(len(order)), _s=(view["source"] != "mitoprobe").astype(int))
view = view.sort_values(["_t", "_s", "balanced_accuracy_mean"], ascending=[True, True, False],
                        kind="mergesort").drop(columns=["_t", "_s"]).reset_index(drop=True)
view["label"] = view["label"].where(view["label"].notna(), view["model"].astype(str) + " · " + view["head"].astype(str))

# "Best on" cards: our best per test set, with the paper's best of that family for reference
ours = view[view["source"] == "mitoprobe"]
if not ours.empty:
    best = ours.loc[ours.groupby("test_set")["balanced_accuracy_mean"].idxmax()]
    best = best.sort_values("test_set", key=lambda t: t.map(order).fillna(len(order)), kind="mergesort")
    cols = st.columns(len(best))
    for col, (_, b) in zip(cols, best.iterrows()):
        has_ref = pd.notna(b["paper_best_balanced_accuracy"])
        col.metric(f"Best on {b['test_set']}", f"{b['balanced_accuracy_mean']:.3f}",
                   delta=f"{b['delta_vs_paper']:+.3f} vs paper" if has_ref else None,
                   help=f"mean balanced accuracy of {b['label']} over the fold models")
        ref = (f"  \npaper best: {b['paper_best_balanced_accuracy']:.3f} ({b['paper_best_model']}, "
               f"{str(b['paper_best_family']).replace('_', ' ')})" if has_ref else "")
        col.caption(f"{b['label']}{ref}")

num = lambda title, help=None, fmt="%.3f": st.column_config.NumberColumn(title, format=fmt, help=help)  # noqa: E731
pin = lambda title, **kw: st.column_config.TextColumn(title, pinned=True, **kw)  # noqa: E731
PAPER_STYLE = "background-color: #eeeeee; color: #555555; font-style: italic"


def _paper_rows(frame: pd.DataFrame):
    """Pandas Styler: the paper's rows in grey italics (grouped and visibly not ours)."""
    paper = frame["source"] == "paper"
    return frame.style.apply(lambda r: [PAPER_STYLE if paper[r.name] else ""] * len(r), axis=1)


if compact:
    cell = view.assign(row=view["label"])
    pivot = (cell.pivot_table(index=["source", "row"], columns="test_set", values="balanced_accuracy_mean",
                              aggfunc="first", sort=False)
             .reindex(columns=data.test_set_order(cell["test_set"].unique()))
             .reset_index())
    pivot.columns.name = None
    sets_ = [c for c in pivot.columns if c not in ("source", "row")]
    pivot = (pivot.assign(_s=pivot["source"].eq("paper").astype(int))  # ours first, best on the first set first
             .sort_values(["_s", *sets_[:1]], ascending=[True, False][:1 + len(sets_[:1])], kind="mergesort")
             .drop(columns="_s").reset_index(drop=True))
    best_style = "background-color: #c7e9c0; font-weight: bold"
    styled = _paper_rows(pivot)
    for t in sets_:
        top = pivot[t].max()
        styled = styled.apply(lambda s, top=top: [best_style if pd.notna(v) and v == top else "" for v in s],
                              subset=[t])
    st.caption("Mean balanced accuracy over the fold models; the best of each test set highlighted.")
    event = st.dataframe(styled, hide_index=True, width="stretch", placeholder="",
                         on_select="rerun", selection_mode="single-row", key="lb_compact",
                         height=min(35 * (len(pivot) + 1) + 3, 640),
                         column_order=["source", "row", *sets_],
                         column_config={"source": pin("source", width="small"), "row": pin("family"),
                                        **{t: num(t, f"mean balanced accuracy on {t}") for t in sets_}})
    table = pivot
    rows = view.drop_duplicates("label").set_index("label")
    picked = [rows.loc[pivot["row"].iloc[i]] for i in (event.selection.rows if event else []) if i < len(pivot)]
else:
    event = st.dataframe(
        _paper_rows(view), hide_index=True, width="stretch", placeholder="",
        on_select="rerun", selection_mode="single-row", key="lb_table",
        height=min(35 * (len(view) + 1) + 3, 640),
        column_order=["source", "label", "test_set", "model", "head", "pooling", "tta", "balanced_accuracy_mean",
                      "balanced_accuracy_std", "delta_vs_paper", "auroc_mean", "auroc_std", "auprc_mean",
                      "brier_mean", "ensemble_balanced_accuracy", "ensemble_balanced_accuracy_ci_low",
                      "ensemble_balanced_accuracy_ci_high", "ensemble_auroc", "ensemble_auroc_ci_low",
                      "ensemble_auroc_ci_high", "oof_auroc", "kappa_experts_mean", "ece_mean", "n_folds"],
        column_config={
            "source": pin("source", width="small"),
            "label": pin("family", help="the family's short label (as `mitoprobe report` shows it)"),
            "test_set": pin("test set"),
            "model": st.column_config.TextColumn("model"),
            "head": st.column_config.TextColumn("head"),
            "tta": st.column_config.CheckboxColumn("TTA", width="small"),
            "balanced_accuracy_mean": num("BA", "balanced accuracy, mean over the 5 fold models"),
            "balanced_accuracy_std": num("± BA", "standard deviation over the 5 fold models"),
            "delta_vs_paper": num("Δ vs paper", "our mean BA minus the best published row of the same family "
                                  "on this test set (probe vs the paper's linear probe; finetune vs LoRA / "
                                  "end-to-end); empty where the paper has no counterpart", fmt="%+.3f"),
            "auroc_mean": num("AUROC", "mean over the 5 fold models"),
            "auroc_std": num("± AUROC"),
            "auprc_mean": num("AUPRC", "area under the precision–recall curve (average precision), mean over "
                              "the fold models; chance level is the atypical prevalence (~10–22%)"),
            "brier_mean": num("Brier", "mean squared error of P(atypical), mean over the fold models (lower is "
                              "better)"),
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
    table = view  # the download: every column, the label included
    picked = [view.iloc[i] for i in (event.selection.rows if event else []) if i < len(view)]

# a selected row of ours opens Compare and Errors with its family (and test set) filled in
if picked and picked[0]["source"] == "mitoprobe":
    row = picked[0]
    ts = None if compact else row["test_set"]
    l1, l2, _ = st.columns([2, 2, 3])
    links.page_link(l1, "compare", f"Compare: {row['label']}", family=row["family_id"], test_set=ts)
    links.page_link(l2, "errors", f"Errors: {row['label']}" + (f" on {ts}" if ts else ""),
                    family=row["family_id"], test_set=ts)
elif picked:
    st.caption("A paper row: the paper published numbers only, no predictions to compare or inspect.")
else:
    st.caption("Select a row of ours to open it in Compare or Errors.")
st.download_button("Download CSV", table.to_csv(index=False).encode(),
                   file_name="mitoprobe_leaderboard" + ("_compact" if compact else "") + ".csv", mime="text/csv")
