"""Compare: chosen run families side by side across test sets, curves, confusion, calibration, experts."""

import numpy as np
import pandas as pd
import streamlit as st

from mitoprobe.classifiers import metrics
from mitoprobe.dashboard import charts, data, links, ui

ctx = ui.context()
st.title("Compare")
ui.require(ctx, "patches", "runs")

runs = data.runs(ctx.root, ctx.stamp)
board = data.leaderboard(ctx.root, ctx.stamp)
fams = data.family_options(runs)
paper = board[board["source"] == "paper"]
paper_labels = (paper.drop_duplicates("family_id").set_index("family_id")["label"].to_dict())
test_sets = data.test_sets(ctx.root, ctx.stamp)
first_set = paper[paper["test_set"].isin(test_sets[:1]) & (paper["family"] == "linear_probe")]
paper_best = first_set.sort_values("balanced_accuracy_mean", ascending=False)["family_id"].head(1).tolist()

c1, c2 = st.columns([3, 2])
st.session_state.setdefault("cmp_families", list(fams)[:3])  # a default, unless the URL or the user chose
chosen = links.bound("cmp_families", links.FAMILY, lambda: c1.multiselect(
    "Run families", list(fams), format_func=fams.get, placeholder="choose run families", key="cmp_families"),
    valid=fams, many=True)
chosen_paper = c2.multiselect("Paper rows", list(paper_labels), default=paper_best, format_func=paper_labels.get,
                              placeholder="none")
if not chosen:
    st.info("Choose at least one run family above.")
    st.stop()

st.subheader("Across the test sets")
st.caption("Mean ± std over the five fold models (paper rows: as published, in grey/black with their own "
           "shapes and dashed bars). Each run family keeps one colour on every chart.")
pts = board[board["family_id"].isin(chosen + chosen_paper)]
st.altair_chart(charts.metric_points(pts, {"balanced_accuracy": "balanced accuracy", "auroc": "AUROC"},
                                     data.test_set_order(pts["test_set"].unique())), width="content")

st.subheader("On one test set")
c1, c2, c3 = st.columns([3, 2, 3])
test_set = ui.pick_test_set(test_sets, "cmp_test_set", container=c1)
fold_opts = [-1, 0, 1, 2, 3, 4]
fold = links.bound("cmp_fold", links.FOLD, lambda: c2.selectbox(
    "Predictions from", fold_opts, format_func=data.fold_name, key="cmp_fold",
    help="The fold ensemble averages the five fold models' probabilities."), valid=fold_opts, cast=int)
custom = c3.toggle("Custom threshold", help="Off: each family's own threshold, chosen on its validation folds.")
threshold = c3.slider("Threshold", 0.0, 1.0, 0.5, 0.01, disabled=not custom)

preds, missing = {}, []
for fid in chosen:
    p = data.family_predictions(ctx.root, ctx.stamp, fid, fold, test_set)
    if len(p):
        preds[fid] = p
    else:
        missing.append(fams[fid])
if missing:
    st.caption(f"No {data.fold_name(fold)} predictions on {test_set} for: " + "; ".join(missing))
if not preds:
    st.info(f"No stored predictions for these families on {test_set} ({data.fold_name(fold)}). "
            "Pick another fold or run `mitoprobe probe` to store predictions.")
    st.stop()

SECTIONS = ["ROC & PR", "Confusion & calibration", "Model vs experts", "Significance"]
section = st.segmented_control("Show", SECTIONS, default=SECTIONS[0], key="cmp_section") or SECTIONS[0]


def _threshold(p) -> float:
    return threshold if custom else float(p["threshold"].iloc[0])


if section == "ROC & PR":
    roc, pr = [], []
    for fid, p in preds.items():
        y, s = p["y"].to_numpy(), p["probability"].to_numpy()
        roc.append(metrics.roc_points(y, s).pipe(lambda f: f.assign(label=fams[fid], family_id=fid,
                                                                     order=np.arange(len(f)))))
        pr.append(metrics.pr_points(y, s).pipe(lambda f: f.assign(label=fams[fid], family_id=fid,
                                                                   order=np.arange(len(f)))))
    a, b = st.columns(2)
    a.markdown("**ROC**")
    a.altair_chart(charts.curves(pd.concat(roc), "fpr", "tpr", "false positive rate", "true positive rate", True),
                   width="stretch")
    b.markdown("**Precision–recall**")
    b.altair_chart(charts.curves(pd.concat(pr), "recall", "precision", "recall (sensitivity)", "precision", False),
                   width="stretch")

elif section == "Confusion & calibration":
    st.markdown("**Confusion matrices**" + (f" at threshold {threshold:.2f}" if custom
                                            else " at each family's threshold"))
    cells, rel = [], []
    for fid, p in preds.items():
        thr = _threshold(p)
        y, s = p["y"].to_numpy(), p["probability"].to_numpy()
        cm = metrics.confusion_counts(y, metrics.predict(s, thr))
        for truth, predicted, k in (("atypical", "atypical", "tp"), ("atypical", "normal", "fn"),
                                    ("normal", "atypical", "fp"), ("normal", "normal", "tn")):
            cells.append(dict(panel=f"{fams[fid]} (t={thr:.2f})", family_id=fid, truth=truth, predicted=predicted,
                              n=cm[k]))
        rel.append(metrics.reliability_table(y, s).assign(label=fams[fid], family_id=fid))
    cells = pd.DataFrame(cells)
    cells["share"] = cells["n"] / cells.groupby(["panel", "truth"])["n"].transform("sum").clip(lower=1)
    st.altair_chart(charts.confusions(cells), width="content")
    a, _ = st.columns(2)
    a.markdown("**Reliability (calibration)**")
    a.altair_chart(charts.reliability(pd.concat(rel)), width="stretch")

elif section == "Significance":
    if len(preds) < 2:
        st.info("Choose at least two run families to test their difference.")
        st.stop()
    st.markdown(f"**Paired bootstrap on the same {test_set} patches** ({data.fold_name(fold)}, each family at its "
                "own threshold): the difference a − b with its 95% CI; p-values Holm-adjusted over the pairs shown.")
    table = data.comparison(ctx.root, ctx.stamp, tuple(preds), fold, test_set)
    st.dataframe(table, hide_index=True, width="stretch",
                 column_order=["metric", "label_a", "label_b", "a", "b", "diff", "ci_low", "ci_high", "p", "p_holm", "n"],
                 column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                for c in ("a", "b", "diff", "ci_low", "ci_high", "p", "p_holm")})

else:
    first = next(iter(preds.values()))
    experts = metrics.expert_columns(first)
    if not experts:
        st.info(f"{test_set} has no individual expert votes; choose a test set whose patches record each "
                "expert's vote.")
        st.stop()
    rows = []
    names = [e.replace("_atypical", "") for e in experts]
    for i, ei in enumerate(experts):
        for ej, nj in zip(experts, names):
            if ei != ej:
                m = first[ei].notna() & first[ej].notna()
                rows.append(dict(rater=names[i], expert=nj, order=i, family_id=None,
                                 kappa=metrics.cohen_kappa(first.loc[m, ei].astype(int), first.loc[m, ej].astype(int))))
    for k, (fid, p) in enumerate(preds.items()):
        kap = metrics.kappa_vs_experts(metrics.predict(p["probability"].to_numpy(), _threshold(p)), p)
        rows += [dict(rater=fams[fid], expert=e, order=len(experts) + k, family_id=fid, kappa=v)
                 for e, v in kap.items()]
    a, b = st.columns(2)
    a.markdown("**Cohen's κ** of each expert and each model (rows) against each expert (columns)")
    a.altair_chart(charts.kappa_heatmap(pd.DataFrame(rows)), width="stretch")
    b.markdown("**The human reference:** each expert against the majority of the other experts")
    b.dataframe(metrics.expert_reference(first), hide_index=True, width="stretch",
                column_config={"balanced_accuracy": st.column_config.NumberColumn("BA", format="%.3f"),
                               "kappa": st.column_config.NumberColumn("κ", format="%.3f")})
