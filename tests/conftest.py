"""Shared fixtures: the real dataset (from ../shared) and a tiny synthetic benchmark folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from mitoprobe.store import Store
from mitoprobe.store.example_benchmark import png_bytes, write_example_benchmark  # noqa: F401  (tests import png_bytes from here)

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("MITOPROBE_DATA", REPO.parent / "shared/datasets/AMi-Br_Benchmark"))
REAL_AMIBR_CSV = REPO.parent / "shared/datasets/AMi-Br/AMI-BR.csv"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "amibr_train_split.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real dataset missing at {REAL_DATA} (CI must have ../shared beside the clone)")
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def real_store(real_data_dir, tmp_path_factory) -> Store:
    """The whole real dataset imported once per test session (~10 s). Treat as read-only."""
    st = Store(tmp_path_factory.mktemp("real-store"))
    st.import_dataset(real_data_dir, REAL_AMIBR_CSV if REAL_AMIBR_CSV.is_file() else None)
    return st


# The synthetic benchmark folder lives in the package (the tutorial notebook builds its store from it).
make_benchmark = write_example_benchmark


@pytest.fixture
def tiny_benchmark(tmp_path) -> Path:
    return make_benchmark(tmp_path)


@pytest.fixture
def tiny_store(tmp_path, tiny_benchmark) -> Store:
    st = Store(tmp_path / "store")
    st.import_dataset(tiny_benchmark, tiny_benchmark / "AMI-BR.csv")
    return st


def make_six_slide_store(root: Path) -> Store:
    """A tiny benchmark store whose AMi-Br train part spans 6 slides (the 5-fold split needs >= 5)."""
    bench = write_example_benchmark(root, n_per_class=10, train_slides=6)
    st = Store(root / "store")
    st.import_dataset(bench, bench / "AMI-BR.csv")
    return st


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run ``mitoprobe ARGS`` through ``main()`` (its MitoprobeError -> exit 2 mapping included)."""
    from mitoprobe.cli import main

    monkeypatch.setattr(sys, "argv", ["mitoprobe", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out + out.err


def copy_benchmark(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def patch_files(st: Store) -> dict[str, bytes]:
    """Every file of the store's patches table (manifest and parts, or a format-1 ``patches.parquet``)
    by path relative to the store: what "the store's patches are byte-identical" compares."""
    files = [*st.patch_parts.dir.glob("*")] if st.patch_parts.dir.is_dir() else []
    files += [st.patch_parts.legacy_path] if st.patch_parts.legacy_path.is_file() else []
    return {str(p.relative_to(st.root)): p.read_bytes() for p in sorted(files) if p.is_file()}
