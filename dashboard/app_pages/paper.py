"""Paper verdict: the paper's published balanced accuracy beside ours, per model × method × test set
(``classifiers.verdict``: the runs table only), with the rule that decides "reproduced"."""

import altair as alt
import pandas as pd
import streamlit as st

from mitoprobe.classifiers import verdict as V
from mitoprobe.dashboard import data, ui

ctx = ui.context()
st.title("Paper verdict")
st.caption("Each published row of the paper (Banerjee, Bertram et al. 2025: linear probe and LoRA on 7 foundation "
           "models, 3 end-to-end baselines, 3 test sets) beside our run with the paper's settings: mean ± std of the "
           "balanced accuracy (BA) over the five fold models. A run with other settings, fewer folds or random "
           "weights is shown but never counts as reproduced.")
ui.require(ctx, "patches")

# verdict colours: agreement green, a difference either way in its own colour, everything undecided grey
COLOURS = {"reproduced": "#2ca02c", "above": "#1f77b4", "below": "#d62728", "not comparable": "#8a8a8a",
           "dry run": "#9467bd", "not run": "#cccccc"}
CELL = {"reproduced": "background-color: #c7e9c0", "above": "background-color: #c6dbef",
        "below": "background-color: #fcbba1", "not comparable": "background-color: #eeeeee; color: #555555",
        "dry run": "background-color: #dadaeb; color: #555555", "not run": "color: #888888"}


@st.cache_data(show_spinner=False, max_entries=4)
def _verdict(root: str, key: tuple) -> pd.DataFrame:
    return V.verdict(data.open_store(root))


table = _verdict(ctx.root, ctx.stamp.results)
if not ctx.status["runs"]:
    what, cmd = ui.NEXT_STEP["runs"]
    st.info(f"{what} Every cell reads 'not run'. The paper's probe: `mitoprobe probe --model uni.hf --head "
            f"torch_linear --pooling cls --store {ctx.root}`")

counts = V.summary(table)
for col, (status, n) in zip(st.columns(len(counts)), counts.items()):
    col.metric(status, int(n))

c1, c2 = st.columns(2)
methods = c1.multiselect("Method", list(V.METHODS), format_func=V.METHOD_NAMES.get, placeholder="all methods")
sets = c2.multiselect("Test set", data.test_set_order(table["test_set"].unique()), placeholder="all test sets")
view = table
if methods:
    view = view[view["method"].isin(methods)]
if sets:
    view = view[view["test_set"].isin(sets)]
view = view.reset_index(drop=True)

shown = V.format_verdict(view)
status = view["status"]
styled = shown.style.apply(lambda col: [CELL[s] for s in status], subset=["verdict"])
text = st.column_config.TextColumn
st.dataframe(styled, hide_index=True, width="stretch", height=min(35 * (len(shown) + 1) + 3, 640),
             column_order=["model", "method", "test set", "verdict", *[c for c in shown if c not in
                                                                       ("model", "method", "test set", "verdict")]],
             column_config={
                 "model": text("model", pinned=True, width="medium"), "method": text("method", pinned=True),
                 "test set": text("test set", pinned=True), "verdict": text("verdict", width="large"),
                 "ours BA (n)": text("ours BA (n)", help="mean ± std over our fold models (their number)"),
                 "spread": text("spread", help="√(σ_paper² + σ_ours²): |Δ| within it is 'reproduced'"),
                 "Welch p": text("Welch p", help="Welch's t-test of the two fold means: context, not the verdict"),
                 "ours": text("ours", help="our run family (its short label, as `mitoprobe report` shows it)"),
                 "paper source": text("paper source", help="the benchmark's notebook that prints the published row "
                                      "(repository@commit:path)")})
st.markdown(f"**Rule.** {V.RULE}")
with st.expander("Paper sources"):
    st.markdown("\n".join(f"- `{s}`" for s in dict.fromkeys(view["paper_source"])))

ours = view[view["balanced_accuracy_mean"].notna()]
if ours.empty:
    st.caption("No run of ours has a published counterpart yet: the plot of ours against the paper appears with the first.")
else:
    pts = ours.assign(method_name=ours["method"].map(V.METHOD_NAMES),
                      x_lo=ours["paper_balanced_accuracy_mean"] - ours["paper_balanced_accuracy_std"],
                      x_hi=ours["paper_balanced_accuracy_mean"] + ours["paper_balanced_accuracy_std"],
                      y_lo=ours["balanced_accuracy_mean"] - ours["balanced_accuracy_std"],
                      y_hi=ours["balanced_accuracy_mean"] + ours["balanced_accuracy_std"])
    lo = float(min(pts["x_lo"].min(), pts["y_lo"].min()))
    hi = float(max(pts["x_hi"].max(), pts["y_hi"].max()))
    pad = 0.02
    scale = alt.Scale(domain=[max(0.0, lo - pad), min(1.0, hi + pad)], zero=False)
    plotted = {s: c for s, c in COLOURS.items() if s != "not run"}  # a cell without a run has no point
    colour = alt.Color("status:N", title="verdict", scale=alt.Scale(domain=list(plotted), range=list(plotted.values())))
    x = alt.X("paper_balanced_accuracy_mean:Q", title="paper BA (mean ± std over 5 folds)", scale=scale)
    y = alt.Y("balanced_accuracy_mean:Q", title="our BA (mean ± std over the fold models)", scale=scale)
    base = alt.Chart(pts)
    diagonal = alt.Chart(pd.DataFrame({"a": scale.domain})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x=alt.X("a:Q", scale=scale), y=alt.Y("a:Q", scale=scale))
    x_bars = base.mark_rule().encode(x=alt.X("x_lo:Q", scale=scale), x2="x_hi:Q", y=y, color=colour)
    y_bars = base.mark_rule().encode(y=alt.Y("y_lo:Q", scale=scale), y2="y_hi:Q", x=x, color=colour)
    points = base.mark_point(filled=True, size=80).encode(
        x=x, y=y, color=colour, shape=alt.Shape("method_name:N", title="method"),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("method_name:N", title="method"), alt.Tooltip("test_set:N"),
                 alt.Tooltip("verdict:N"), alt.Tooltip("delta:Q", title="Δ", format="+.3f"),
                 alt.Tooltip("label:N", title="ours")])
    st.altair_chart(alt.layer(diagonal, x_bars, y_bars, points).properties(height=460), width="stretch")
    st.caption("One point per cell with a run of ours; bars: ± std over the fold models; dashed: ours = the paper's.")
st.download_button("Download CSV", view.to_csv(index=False).encode(), file_name="mitoprobe_paper_verdict.csv",
                   mime="text/csv")
