"""Shared fixtures: the real dataset (from ../shared) and a tiny synthetic benchmark folder."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from store import Store

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


def png_bytes(rgb: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def make_benchmark(root: Path, n_per_class: int = 6, seed: int = 0, with_amibr_csv: bool = True) -> Path:
    """Write a small, valid benchmark folder in the public layout; returns its path.

    AMi-Br: 2 slides per class-balanced group, half of the patches in the train CSV.
    """
    rng = np.random.default_rng(seed)
    bench = root / "AMi-Br_Benchmark"
    train_rows, amibr_rows, md_rows = [], [], []
    for ds in ("AMi-Br", "AtNorM-Br", "AtNorM-MD"):
        for label in ("Atypical", "Normal"):
            d = bench / ds / label
            d.mkdir(parents=True)
            for i in range(n_per_class):
                img = rng.integers(0, 255, size=(128, 128, 3), dtype=np.uint8)
                if label == "Atypical":
                    img[40:88, 40:88] //= 3  # a dark "figure" so the classes differ
                if ds == "AMi-Br":
                    uid = i + (0 if label == "Atypical" else 100)
                    name = f"MIDOG21_{uid}.png"
                    slide = f"{i % 4:03d}.tiff"
                    atyp = label == "Atypical"
                    amibr_rows.append(dict(slide=slide, dataset="MIDOG21", uid=uid, x=10 * i, y=20 * i,
                                           expert1_label="AMF other" if atyp else "NMF metaphase",
                                           expert2_label="AMF other" if atyp else "NMF metaphase",
                                           expert1_atypical=atyp, expert2_atypical=atyp,
                                           expert3_atypical=not atyp if i == 0 else atyp, majority_atypical=atyp))
                    if i % 4 < 2:
                        train_rows.append(dict(slide=slide, dataset="MIDOG21", uid=uid, final_label=label,
                                               dataset_uid=name))
                else:
                    name = f"{i + (0 if label == 'Atypical' else 100)}.png"
                    if ds == "AtNorM-MD":
                        md_rows.append(dict(Filename=name, **{f"Expert_{k}": label for k in range(1, 6)},
                                            Majority=label))
                (d / name).write_bytes(png_bytes(img))
    pd.DataFrame(train_rows).to_csv(bench / "amibr_train_split.csv")
    pd.DataFrame(md_rows).to_csv(bench / "AtNorM-MD_expert_votes.csv", index=False)
    if with_amibr_csv:
        pd.DataFrame(amibr_rows).to_csv(bench / "AMI-BR.csv")
    return bench


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
    bench = make_benchmark(root, n_per_class=10)
    tr = pd.read_csv(bench / "amibr_train_split.csv", index_col=0)
    tr["slide"] = [f"s{u % 6}.tiff" for u in tr["uid"]]
    tr.to_csv(bench / "amibr_train_split.csv")
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
