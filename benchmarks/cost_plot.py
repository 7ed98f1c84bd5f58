"""Log-log cost curves from ``cost_curves.py`` rows: wall s and peak RSS MiB against the store's size.

Two panels side by side (wall seconds vs patches; peak RSS MiB vs patches), one line per command,
both axes logarithmic. The x of a row is the size of its scale's synthetic cohort (``x<s>`` ->
round(s x 6,573) patches), the same for every command of a scale, so each command's points line up
into a curve (a row's own ``patches`` column is what that command processed: 1,000 for ``predict``
at every scale). Only rows that ran and finished (``status`` ok) with a wall time are drawn, plus
extrapolated embed times (hollow points); a dashboard page's warm load (a cache hit) is left out; a row whose scale cannot be read falls back to its own
``patches`` (dropped at 0: log axis).

Rendering, offline with what is installed: the chart is built with altair (Vega-Lite). An ``.svg``
or ``.png`` path is rendered by ``vl_convert`` when that package is installed; without it (the case
in this repo's venv, and matplotlib is not installed either) nothing here can render SVG/PNG, so the
chart is written as HTML next to the requested path (same name, ``.html``), with a warning. An
``.html`` path always gives HTML; ``.json`` gives the Vega-Lite spec. The HTML embeds the data and
the spec but loads the vega / vega-lite / vega-embed scripts from a CDN when opened (altair can only
inline them through ``vl_convert``), so viewing it needs network access once.

Redraw from stored JSON: python -m benchmarks.cost_plot --json /tmp/cost_curves.json --out /tmp/cc.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BASE = 6573  # x1 = AMi-Br's patch count (as in cost_curves.py)


def load_rows(paths: list[Path]) -> list[dict]:
    """The rows of one or more ``cost_curves.py --json`` files, in order (a later file's rows after)."""
    rows: list[dict] = []
    for p in paths:
        rows += json.loads(Path(p).read_text())["rows"]
    return rows


def scale_patches(row: dict) -> int | None:
    """The size of the row's scale cohort (``x0.05`` -> 329), or the row's own ``patches`` if the scale
    cannot be read."""
    try:
        return int(round(float(str(row["scale"]).lstrip("x")) * BASE))
    except (KeyError, ValueError):
        return row.get("patches") or None


def points(rows: list[dict]) -> list[dict]:
    """One plot point per drawable row: command, patches (x), wall_s, peak_rss_mib, measured."""
    out = []
    for r in rows:
        x = scale_patches(r)
        if not x or x <= 0:
            continue
        wall, measured = r.get("wall_s"), True
        if r.get("status") != "ok":
            if r.get("extrapolated_wall_s"):
                wall, measured = r["extrapolated_wall_s"], False
            else:
                continue
        rss = r.get("peak_rss_mib")
        out.append({"command": r["command"], "scale": r.get("scale"), "patches": x,
                    "wall_s": wall if wall and wall > 0 else None,
                    "peak_rss_mib": rss if rss and rss > 0 else None,
                    "measured": "measured" if measured else "extrapolated"})
    return out


def chart(rows: list[dict], title: str = "mitoprobe cost curves"):
    """The altair chart: two log-log panels, one line per command."""
    import altair as alt
    import pandas as pd

    df = pd.DataFrame(points(rows), columns=["command", "scale", "patches", "wall_s", "peak_rss_mib", "measured"])
    df = df[~df["command"].str.endswith("(warm)")]  # a warm page is a cache hit (~0.1 s): its first load tells
    x = alt.X("patches:Q", scale=alt.Scale(type="log"), title="store size (patches of the scale's cohort)",
              axis=alt.Axis(values=[1_000, 10_000, 100_000, 1_000_000], format="~s"))
    color = alt.Color("command:N", title="command", legend=alt.Legend(columns=1, labelLimit=300))
    tooltip = ["command", "scale", "patches", "wall_s", "peak_rss_mib", "measured"]

    def panel(field: str, ytitle: str):
        base = alt.Chart(df).transform_filter(f"isValid(datum.{field})").encode(
            x=x, y=alt.Y(f"{field}:Q", scale=alt.Scale(type="log"), title=ytitle), color=color, tooltip=tooltip)
        lines = base.mark_line()
        pts = base.mark_point(size=40).encode(
            fill=alt.condition("datum.measured == 'measured'", "command:N", alt.value("white"), legend=None),
            shape=alt.Shape("measured:N", title="wall time"))
        return (lines + pts).properties(width=380, height=320, title=ytitle)

    return alt.hconcat(panel("wall_s", "wall s"), panel("peak_rss_mib", "peak RSS MiB")).properties(
        title=title).resolve_scale(color="shared")


def plot(rows: list[dict], out: Path, title: str = "mitoprobe cost curves") -> Path:
    """Write the chart to ``out`` (svg/png when vl_convert renders it, else HTML beside it; html; json).
    Returns the path actually written."""
    out = Path(out)
    ch = chart(rows, title)
    fmt = out.suffix.lower().lstrip(".")
    if fmt in ("svg", "png", "pdf"):
        try:
            import vl_convert  # noqa: F401 - altair renders through it
        except ImportError:
            html = out.with_suffix(".html")
            print(f"vl_convert is not installed: cannot render {fmt} offline; writing the chart as HTML to {html} "
                  "instead (it loads vega from a CDN when opened)", file=sys.stderr)
            ch.save(str(html))
            return html
        ch.save(str(out))
        return out
    if fmt not in ("html", "json"):
        raise ValueError(f"{out}: plot path must end in .svg, .png, .pdf, .html or .json")
    ch.save(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, nargs="+", required=True, help="cost_curves.py --json files")
    ap.add_argument("--out", type=Path, required=True, help=".svg/.png (needs vl_convert), .html or .json")
    ap.add_argument("--title", default="mitoprobe cost curves")
    a = ap.parse_args(argv)
    written = plot(load_rows(a.json), a.out, a.title)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
