"""Where the store and the datasets live, resolved one way everywhere."""

from __future__ import annotations

import os
from pathlib import Path

STORE_ENV = "MITOPROBE_STORE"
DATA_ENV = "MITOPROBE_DATA"
CACHE_ENV = "MITOPROBE_CACHE"
DEFAULT_STORE = "mitoprobe-store"
# files at the top of a store folder
PATCHES_FILE = "patches.parquet"  # a format-1 store's patches table (store/migrations.py)
PATCHES_DIR = "patches"  # the patches table's parts and MANIFEST.json (store/patch_parts.py)
MANIFEST = "MANIFEST.json"
FOLDS_FILE = "folds.parquet"
FORMAT_FILE = "FORMAT.json"  # the store's format stamp (store/migrations.py)

# Relative to the working directory, as in the team's checkouts (the repo beside ../shared).
SHARED_BENCHMARK = Path("../shared/datasets/AMi-Br_Benchmark")


def store_root(path: str | Path | None = None) -> Path:
    """``path``, else ``$MITOPROBE_STORE``, else ``./mitoprobe-store``."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(STORE_ENV, DEFAULT_STORE))


def is_store(root: str | Path) -> bool:
    """Whether ``root`` is a mitoprobe store: a folder holding its format stamp or its patches table
    (every store has one once anything was written). A mistyped ``--store`` is then an error, not an
    empty store."""
    root = Path(root)
    return (root / FORMAT_FILE).is_file() or (root / PATCHES_DIR).is_dir() or (root / PATCHES_FILE).is_file()


def cache_dir() -> Path:
    """User cache for ``mitoprobe data download`` (``$MITOPROBE_CACHE`` or ~/.cache/mitoprobe)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(base) / "mitoprobe"


def default_data_dir() -> Path | None:
    """First existing of ``$MITOPROBE_DATA``, ``../shared/...``, the download cache; else None."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    for candidate in (SHARED_BENCHMARK, cache_dir() / "AMi-Br_Benchmark"):
        if candidate.is_dir():
            return candidate
    return None


def find_amibr_csv(data_dir: Path) -> Path | None:
    """``AMI-BR.csv`` inside the benchmark folder or beside it (``../AMi-Br/AMI-BR.csv``, the
    shared layout). Never a CSV from elsewhere: it must describe the same patches."""
    for candidate in (
        data_dir / "AMI-BR.csv",
        data_dir.parent / "AMi-Br" / "AMI-BR.csv",
    ):
        if candidate.is_file():
            return candidate
    return None
