"""Altair chart builders (pure: DataFrames in, charts out; no store access, no metric code)."""

from __future__ import annotations

import hashlib
import json

import altair as alt
import numpy as np
import pandas as pd

# -- one colour per run family, on every chart and page ---------------------------------------------
# A family's colour comes from a stable hash of its family_id into a fixed categorical palette, so it
# is the same on every chart, page and rerun whatever else is shown (two families can share a colour:
# 16 colours; the legend names them). No greys there: grey and black mark the paper's published rows,
# which also get their own point shapes (ours: circles) and dashed lines.
FAMILY_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                  "#bcbd22", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#393b79", "#d95f02"]
PAPER_PALETTE = ["#000000", "#555555", "#8a8a8a", "#2f2f2f", "#707070"]
PAPER_SHAPES = ["diamond", "square", "triangle-up", "cross", "triangle-down"]
OUR_SHAPE = "circle"
PAPER_DASH = [5, 3]


def is_paper(family_id: str) -> bool:
    return str(family_id).startswith("paper:")


def _slot(family_id: str, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(family_id).encode(), digest_size=8).digest(), "big") % n


def family_colour(family_id: str) -> str:
    """The colour of one run family (or paper row: ``paper:...`` ids get a grey), the same everywhere."""
    palette = PAPER_PALETTE if is_paper(family_id) else FAMILY_PALETTE
    return palette[_slot(family_id, len(palette))]


def family_shape(family_id: str) -> str:
    return PAPER_SHAPES[_slot(family_id, len(PAPER_SHAPES))] if is_paper(family_id) else OUR_SHAPE


def family_domain(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(labels, family_ids) in first-seen order; ``df`` has ``label`` and ``family_id``."""
    pairs = df[["label", "family_id"]].drop_duplicates("label")
    return pairs["label"].astype(str).tolist(), pairs["family_id"].astype(str).tolist()


def family_color(df: pd.DataFrame, **kw) -> alt.Color:
    """``label:N`` coloured with each family's own colour (an explicit domain/range scale)."""
    labels, fids = family_domain(df)
    return alt.Color("label:N", scale=alt.Scale(domain=labels, range=[family_colour(f) for f in fids]), **kw)


def label_colour_expr(colours: dict[str, str], default: str = "black") -> alt.ExprRef:
    """A Vega expression colouring axis/header labels (``datum.value``) by a label -> colour map."""
    expr = json.dumps(default)
    for label, colour in reversed(list(colours.items())):
        expr = f"datum.value === {json.dumps(label)} ? {json.dumps(colour)} : ({expr})"
    return alt.ExprRef(expr)
# Text colour as data ("black"/"white"): an identity scale, since Streamlit's chart theming breaks
# on ``scale=None`` and ``alt.condition`` costs a schema round trip per chart.
INK = alt.Color("ink:N", scale=alt.Scale(domain=["black", "white"], range=["black", "white"]), legend=None)


def metric_points(df: pd.DataFrame, metrics: dict[str, str], test_sets: list[str] | None = None
                  ) -> alt.FacetChart:
    """Mean ± std per family across test sets, one panel per metric, one shared legend.

    ``df``: label, test_set, source and ``{metric}_mean`` / ``{metric}_std`` for each metric in
    ``metrics`` (column stem -> panel title); ``test_sets``: the x order (default: as found)."""
    long = pd.concat([df.assign(metric=title, mean=df[f"{m}_mean"], std=df[f"{m}_std"].fillna(0.0))
                      for m, title in metrics.items()], ignore_index=True)
    long = long.assign(lo=long["mean"] - long["std"], hi=long["mean"] + long["std"])
    lo = float(long["lo"].min()) if len(long) else 0.5
    labels, fids = family_domain(df) if len(df) else ([], [])
    legend = alt.Legend(orient="right", labelLimit=340)
    base = alt.Chart().encode(
        x=alt.X("test_set:N", sort=test_sets or list(dict.fromkeys(df["test_set"])), title=None,
                axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("label:N", sort=labels),
        color=alt.Color("label:N", title=None, legend=legend,
                        scale=alt.Scale(domain=labels, range=[family_colour(f) for f in fids])))
    scale = alt.Scale(domain=[max(0.0, min(0.5, lo - 0.02)), 1.0], zero=False)
    y = alt.Y("mean:Q", title=None, scale=scale)
    # ours: filled circles, solid bars; the paper's rows: grey/black diamonds etc. with dashed bars
    points = base.mark_point(filled=True, size=90).encode(
        y=y, shape=alt.Shape("label:N", title=None, legend=legend,
                             scale=alt.Scale(domain=labels, range=[family_shape(f) for f in fids])),
        tooltip=[alt.Tooltip("label:N"), alt.Tooltip("source:N"), alt.Tooltip("test_set:N"),
                 alt.Tooltip("metric:N"), alt.Tooltip("mean:Q", format=".3f"), alt.Tooltip("std:Q", format=".3f")])
    bars = base.mark_rule(strokeWidth=2).encode(
        y=alt.Y("lo:Q", scale=scale), y2=alt.Y2("hi:Q"),
        strokeDash=alt.StrokeDash("source:N", legend=None,
                                  scale=alt.Scale(domain=["mitoprobe", "paper"], range=[[1, 0], PAPER_DASH])))
    return alt.layer(bars, points, data=long).properties(width=330, height=280).facet(
        column=alt.Column("metric:N", title=None, sort=list(metrics.values()),
                          header=alt.Header(labelFontSize=14, labelFontWeight="bold")))


def thin_line(df: pd.DataFrame, x: str, y: str, step: bool = False, tol: float = 1e-12) -> pd.DataFrame:
    """The rows of one line (in drawing order) without the vertices that do not change what is drawn.

    ``step=False`` (a straight line through the points): drop a point collinear with its neighbours
    and between them. ``step=True`` (Vega's ``step-after``): drop a point inside a vertical run at one
    x, or a horizontal run at one y. A ROC or PR curve over 2,000 patches has one vertex per distinct
    score but only a few hundred corners, and the browser draws every vertex it is sent."""
    if len(df) < 3:
        return df
    X, Y = df[x].to_numpy(float), df[y].to_numpy(float)
    x0, x1, x2 = X[:-2], X[1:-1], X[2:]
    y0, y1, y2 = Y[:-2], Y[1:-1], Y[2:]
    between = lambda a, b, c: (np.minimum(a, c) - tol <= b) & (b <= np.maximum(a, c) + tol)  # noqa: E731
    if step:
        inner = ((np.abs(x0 - x1) <= tol) & (np.abs(x1 - x2) <= tol) & between(y0, y1, y2)) | \
                ((np.abs(y0 - y1) <= tol) & (np.abs(y1 - y2) <= tol) & between(x0, x1, x2))
    else:
        cross = (x1 - x0) * (y2 - y1) - (y1 - y0) * (x2 - x1)
        inner = (np.abs(cross) <= tol) & between(x0, x1, x2) & between(y0, y1, y2)
    keep = np.r_[True, ~inner, True]
    return df[keep]


def curves(df: pd.DataFrame, x: str, y: str, title_x: str, title_y: str, diagonal: bool) -> alt.Chart:
    """ROC (diagonal=True) or PR curves; ``df``: label, family_id, order plus the two coordinate columns.
    Each family in its own colour (``family_colour``); paper rows, if any, dashed. Only the vertices
    that shape each line are sent (``thin_line``): the same picture, drawn faster."""
    df = pd.concat([thin_line(g.sort_values("order", kind="mergesort"), x, y, step=not diagonal)
                    for _, g in df.groupby("label", sort=False)], ignore_index=True) if len(df) else df
    color = family_color(df, title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=360))
    line = alt.Chart(df.assign(source=["paper" if is_paper(f) else "mitoprobe" for f in df["family_id"]])
                     ).mark_line(interpolate="step-after" if not diagonal else "linear").encode(
        x=alt.X(f"{x}:Q", title=title_x, scale=alt.Scale(domain=[0, 1])),
        y=alt.Y(f"{y}:Q", title=title_y, scale=alt.Scale(domain=[0, 1])),
        color=color, order=alt.Order("order:Q"),
        strokeDash=alt.StrokeDash("source:N", legend=None,
                                  scale=alt.Scale(domain=["mitoprobe", "paper"], range=[[1, 0], PAPER_DASH])))
    layers = [line]
    if diagonal:
        ref = pd.DataFrame({"a": [0.0, 1.0], "b": [0.0, 1.0]})
        layers.insert(0, alt.Chart(ref).mark_line(strokeDash=[4, 4], color="gray").encode(x=alt.X("a:Q"),
                                                                                           y=alt.Y("b:Q")))
    return alt.layer(*layers).properties(height=340)


def confusions(df: pd.DataFrame, columns: int = 3) -> alt.FacetChart:
    """2×2 heatmaps, one panel per ``panel``; ``df``: panel, truth, predicted, n, share (of the true class),
    and optionally family_id (each panel title then in its family's colour).

    One faceted chart rather than one chart per family: each Altair chart costs Streamlit a spec
    conversion, so fewer charts render faster."""
    d = df.assign(txt=[f"{n} ({s:.0%})" for n, s in zip(df["n"], df["share"])],
                  ink=["white" if s > 0.55 else "black" for s in df["share"]])
    base = alt.Chart().encode(
        x=alt.X("predicted:N", sort=["atypical", "normal"], title="predicted", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("truth:N", sort=["atypical", "normal"], title="truth"))
    rect = base.mark_rect().encode(color=alt.Color("share:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"),
                                                   legend=None))
    text = base.mark_text(fontSize=14).encode(text=alt.Text("txt:N"), color=INK)
    head = dict(labelLimit=300, labelFontSize=12, labelAnchor="start")
    if "family_id" in d:
        pairs = d.drop_duplicates("panel")
        head.update(labelFontWeight="bold", labelColor=label_colour_expr(
            {p: family_colour(f) for p, f in zip(pairs["panel"], pairs["family_id"])}))
    return alt.layer(rect, text, data=d).properties(width=230, height=alt.Step(44)).facet(
        facet=alt.Facet("panel:N", title=None, sort=list(dict.fromkeys(d["panel"])), header=alt.Header(**head)),
        columns=columns)


def reliability(df: pd.DataFrame) -> alt.Chart:
    """Calibration: observed atypical fraction vs mean predicted probability per bin, plus y = x.
    ``df``: label, family_id, mean_predicted, fraction_positive, n; each family in its own colour."""
    ref = alt.Chart(pd.DataFrame({"a": [0.0, 1.0]})).mark_line(strokeDash=[4, 4], color="gray").encode(
        x=alt.X("a:Q"), y=alt.Y("a:Q"))
    color = family_color(df, title=None, legend=alt.Legend(orient="bottom", columns=1, labelLimit=360))
    enc = dict(x=alt.X("mean_predicted:Q", title="mean predicted P(atypical)", scale=alt.Scale(domain=[0, 1])),
               y=alt.Y("fraction_positive:Q", title="observed fraction atypical", scale=alt.Scale(domain=[0, 1])),
               color=color)
    line = alt.Chart(df).mark_line(point=True).encode(
        **enc, tooltip=[alt.Tooltip("label:N"), alt.Tooltip("mean_predicted:Q", format=".2f"),
                        alt.Tooltip("fraction_positive:Q", format=".2f"), alt.Tooltip("n:Q")])
    return alt.layer(ref, line).properties(height=340)


def kappa_heatmap(df: pd.DataFrame) -> alt.Chart:
    """Cohen's κ of each rater (experts and models, rows) against each expert (columns). ``df``: rater,
    expert, order, kappa, and optionally family_id (empty for experts): model rows are then labelled in
    their family's colour, expert rows in black."""
    axis = dict(labelLimit=360)
    if "family_id" in df:
        models = df[df["family_id"].notna()].drop_duplicates("rater")
        axis.update(labelColor=label_colour_expr({r: family_colour(f) for r, f in zip(models["rater"],
                                                                                     models["family_id"])}))
    base = alt.Chart().encode(
        x=alt.X("expert:N", title="against expert", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("rater:N", title=None, sort=alt.SortField("order"), axis=alt.Axis(**axis)))
    rect = base.mark_rect().encode(color=alt.Color("kappa:Q", scale=alt.Scale(domain=[0, 1], scheme="greens"),
                                                   title="κ"))
    text = base.mark_text().encode(text=alt.Text("kappa:Q", format=".2f"), color=INK)
    return alt.layer(rect, text, data=df.assign(ink=["white" if k > 0.6 else "black" for k in df["kappa"]])
                     ).properties(height=alt.Step(26))


COLOURS = {  # fixed colours where the categories are known: atypical / wrong stand out in red
    "label": (["Atypical", "Normal"], ["#d62728", "#9ecae1"]),
    "prediction": (["Atypical", "Normal", "not predicted"], ["#d62728", "#9ecae1", "#e0e0e0"]),
    "correct": (["wrong", "correct", "not predicted"], ["#d62728", "#74c476", "#e0e0e0"]),
}


def scatter(df: pd.DataFrame, color: str, axes: tuple[str, str] = ("component 1", "component 2"),
            selectable: bool = True) -> alt.Chart:
    """2-D embedding map; ``df``: x, y, patch_id, the colour column and tooltip fields; ``axes``: the
    axis titles (e.g. the variance each principal component explains). Rare categories (atypical,
    wrong) are drawn last so they stay visible. Two selections: drag a rectangle (``picked``) or
    click one patch (``clicked``, by patch_id)."""
    tips = [c for c in ("patch_id", "dataset", "label", "probability", "prediction", "correct") if c in df]
    df = df[list(dict.fromkeys(["x", "y", color, *tips]))]  # only what is drawn: thousands of rows go to the browser
    if color in COLOURS:
        domain, colours = COLOURS[color]
        scale = alt.Scale(domain=domain, range=colours)
        rank = {v: len(domain) - i for i, v in enumerate(domain)}
        df = df.assign(_z=df[color].map(rank).fillna(0)).sort_values("_z", kind="mergesort").drop(columns="_z")
    else:
        scale = alt.Scale(scheme="tableau10")
    tooltip = [alt.Tooltip("probability:Q", title="P(atypical)", format=".3f") if c == "probability"
               else alt.Tooltip(f"{c}:N") for c in tips]
    chart = alt.Chart(df).mark_circle(size=18, opacity=0.7).encode(
        x=alt.X("x:Q", title=axes[0], axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("y:Q", title=axes[1], axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color(f"{color}:N", title=color, scale=scale, legend=alt.Legend(orient="right")),
        tooltip=tooltip).properties(height=560)
    if not selectable:
        return chart
    return chart.add_params(alt.selection_interval(name="picked"),
                            alt.selection_point(name="clicked", fields=["patch_id"], on="click",
                                                clear="dblclick"))
