"""Terminal output shared by every command: rich tables, human sizes, the leaderboard."""

from __future__ import annotations

import numbers

import click
import pandas as pd

from classifiers.report import format_board, human_reference, leaderboard


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_frame(df: pd.DataFrame, title: str | None = None, max_rows: int = 200, floatfmt: str = "{:.4f}") -> None:
    """Print a DataFrame as a rich table (falls back to plain text when not a terminal)."""
    from rich.console import Console
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
    console = Console(width=200 if not Console().is_terminal else None)
    console.print(table)
    if len(df) > max_rows:
        console.print(f"... {len(df) - max_rows} more rows")


def print_report(store, fmt: str = "table", model: str | None = None, family: str | None = None,
                 with_paper: bool = True, human: bool = True) -> None:
    """Print the leaderboard (and the experts' reference) as a table, markdown or CSV."""
    board = leaderboard(store, model=model, family=family, with_paper=with_paper)
    if fmt == "csv":
        click.echo(board.to_csv(index=False), nl=False)
        return
    pretty = format_board(board)
    if fmt == "markdown":
        click.echo(pretty.to_markdown(index=False, disable_numparse=True))  # keep "1.000", not "1"
    else:
        print_frame(pretty, title="leaderboard: mean ± std (ddof=0, as the paper) over 5 fold models; "
                    "fold ensemble with 95% bootstrap CI")
    if human:
        ref = human_reference(store)
        if len(ref):
            if fmt == "markdown":
                click.echo("\nHuman reference (each expert vs the others' majority, ties left out):\n")
                click.echo(ref.to_markdown(index=False, floatfmt=".3f"))
            else:
                print_frame(ref, title="human reference: each expert vs the others' majority (ties left out)",
                            floatfmt="{:.3f}")
