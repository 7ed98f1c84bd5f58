"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import click

STORE_OPTION = click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
                            help="Store folder (default $MITOPROBE_STORE or ./mitoprobe-store).")
