"""``mitoprobe dashboard``: thin over :func:`dashboard.serve`."""

from __future__ import annotations

from pathlib import Path

import click

from mitoprobe import dashboard

from .options import STORE_OPTION


@click.command("dashboard")
@STORE_OPTION
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="Port to serve on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (localhost by default; 0.0.0.0 exposes it on the network).")
def dashboard_cmd(store_path: Path | None, port: int, host: str) -> None:
    """Open the results dashboard (leaderboard, compare, similarity search, embedding map, errors).

    Serves a Streamlit app at http://HOST:PORT until Ctrl-C; it only reads the store, so it can run
    while jobs write new results (they show up on the next interaction).

    Example: mitoprobe dashboard --store mitoprobe-store --port 8501
    """
    click.echo(f"mitoprobe dashboard: http://{host}:{port}  (Ctrl-C to stop)")
    raise SystemExit(dashboard.serve(store_path, port=port, host=host))
