"""Terminal output shared by every command: rich tables, human sizes, the leaderboard, import reports."""

from __future__ import annotations

import numbers
from pathlib import Path

import click
import pandas as pd

from mitoprobe.api import resolve_data
from mitoprobe.classifiers.report import DELTA, HELDOUT, compact_board, format_board, human_reference, leaderboard


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def console(width: int | None = None):
    """A rich console ``width`` columns wide; without one, the terminal's width, or 200 when not a terminal."""
    from rich.console import Console

    return Console(width=width or (200 if not Console().is_terminal else None))


def print_frame(df: pd.DataFrame, title: str | None = None, max_rows: int = 200, floatfmt: str = "{:.4f}",
                width: int | None = None) -> None:
    """Print a DataFrame as a rich table (falls back to plain text when not a terminal)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(df[col]) else "left")
    for _, row in df.head(max_rows).iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("" if pd.isna(v) else floatfmt.format(v))
            elif isinstance(v, (bytes, bytearray)):
                cells.append(f"<{len(v)} bytes>")
            elif (isinstance(v, (list, tuple)) or getattr(v, "ndim", 0) == 1) and len(v) > 8:  # emb_* vectors
                head = ", ".join(format(x, ".3g") if isinstance(x, numbers.Real) and not isinstance(x, numbers.Integral)
                                 else str(x) for x in list(v)[:3])
                cells.append(f"[{head}, ...] ({len(v)})")
            else:
                is_seq = isinstance(v, (list, tuple, dict)) or getattr(v, "ndim", 0) > 0
                cells.append("" if v is None or (not is_seq and pd.isna(v)) else str(v))
        table.add_row(*cells)
    out = console(width)
    out.print(table)
    if len(df) > max_rows:
        out.print(f"... {len(df) - max_rows} more rows")


# The default report fits this many columns when not printed to a terminal (a terminal: its own width;
# the label column folds first).
REPORT_WIDTH = 120


def _two_lines(name: str, width: int = 13) -> str:
    """A long column name (a cohort's test set) broken at a '-' or '_' near its middle, to keep the column
    as narrow as its cells ("0.812 ± 0.021")."""
    if len(name) <= width:
        return name
    cuts = [i + 1 for i, ch in enumerate(name) if ch in "-_ " and 0 < i < len(name) - 1]
    if not cuts:
        return name
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return name[:cut] + "\n" + name[cut:]


def leaderboard_table(board: pd.DataFrame, title: str | None = None, caption: str | None = None):
    """``classifiers.report.compact_board``'s frame as a rich table: our families, then (dim, after a
    blank line) the paper's published rows. Only the label column folds when space is short."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left", caption_justify="left",
                  pad_edge=False, collapse_padding=True)
    headers = {HELDOUT: "held-out\nAUROC", DELTA: "Δ vs paper best\nper test set"}
    cols = [c for c in board.columns if c != "source"]
    for c in cols:
        if c == "family":
            table.add_column("family", overflow="fold", min_width=16)
        else:
            table.add_column(headers.get(c, _two_lines(c)), justify="right", no_wrap=True)
    prev = None
    for _, r in board.iterrows():
        if prev is not None and r["source"] != prev:
            table.add_section()
        prev = r["source"]
        table.add_row(*[str(r[c]) for c in cols], style="dim" if r["source"] == "paper" else None)
    return table


def print_report(store, fmt: str = "table", model: str | None = None, family: str | None = None,
                 with_paper: bool = True, human: bool = True, wide: bool = False, width: int | None = None) -> None:
    """Print the leaderboard (and the experts' reference) as a table, markdown or CSV.

    The default table is one row per family (``compact_board``) in ``width`` columns (default: the
    terminal's, else ``REPORT_WIDTH``); ``wide`` = every column, one row per family x test set (as
    markdown and CSV always are)."""
    board = leaderboard(store, model=model, family=family, with_paper=with_paper)
    if fmt == "csv":
        click.echo(board.to_csv(index=False), nl=False)
        return
    if not wide and width is None and not console().is_terminal:
        width = REPORT_WIDTH
    if fmt == "markdown":
        click.echo(format_board(board).to_markdown(index=False, disable_numparse=True))  # keep "1.000", not "1"
    elif wide:
        print_frame(format_board(board), title="leaderboard: mean ± std (ddof=0, as the paper) over 5 fold models; "
                    "fold ensemble with 95% bootstrap CI", width=width)
    else:
        out = console(width)
        if board.empty:
            out.print("no runs yet: `mitoprobe probe --model handcrafted` (or `mitoprobe run`) fills the leaderboard")
        else:
            out.print(leaderboard_table(
                compact_board(board),
                title="leaderboard: balanced accuracy, mean ± std over the fold models; best held-out AUROC first",
                caption="std with ddof=0, as the paper. held-out AUROC: the fold ensemble's out-of-fold probabilities "
                        "on the training slides (what selection saw). Δ: our mean balanced accuracy minus the paper's "
                        "best comparable published row, on each of the paper's test sets in turn. seeds ± BA (when a "
                        "family ran several `--seeds`): their number and the std of their mean balanced accuracy on the "
                        "first test set, beside the fold spread. --wide: every "
                        "column (CIs, AUROC, AUPRC, Brier, κ); --format csv or markdown: all of it."))
    if human:
        ref = human_reference(store)
        if len(ref):
            if fmt == "markdown":
                click.echo("\nHuman reference (each expert vs the others' majority, ties left out):\n")
                click.echo(ref.to_markdown(index=False, floatfmt=".3f"))
            else:
                click.echo("")
                print_frame(ref, title="human reference: each expert vs the others' majority (ties left out)",
                            floatfmt="{:.3f}", width=width)


def import_benchmark(ws, data_dir: Path | None, amibr_csv: Path | None, quiet: bool = False,
                     replace: bool = False):
    """``data import`` and ``mitoprobe run``: resolve the data folder, import it through ``ws``, print counts."""
    data_dir, amibr_csv = resolve_data(data_dir, amibr_csv)
    click.echo(f"importing {data_dir}" + (f" (+ {amibr_csv})" if amibr_csv else " (no AMI-BR.csv found: "
               "AMi-Br test patches will lack slide ids and expert votes)"))
    outcome = ws.import_benchmark(data_dir, amibr_csv, progress=not quiet, replace=replace)
    report_import(outcome, quiet)
    return outcome


def report_import(outcome, quiet: bool = False) -> None:
    """Notes, what changed, and the counts of what was imported."""
    for note in outcome.notes:
        click.secho(f"note: {note}", fg="yellow")
    if outcome.changed:
        w = outcome.written
        wrote = f" ({len(w.files)} new part(s), {w.bytes / 2**20:.1f} MiB written)" if w is not None else ""
        click.echo(f"imported into {outcome.path}{wrote}")
        if w is not None and w.migrated:
            click.echo("  the store's patches.parquet (format 1) is now the first part of patches/MANIFEST.json "
                       "(migrated in place: nothing moved or rewritten)")
    else:
        click.echo(f"nothing changed: {outcome.path} already holds exactly this data")
    if not quiet:
        print_frame(outcome.counts, title="patches")
