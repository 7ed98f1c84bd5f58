"""A small synthetic benchmark folder in the public AMi-Br_Benchmark layout: the tutorial notebook's and the tests' data.

Not pathology: random-noise 128 px patches, the atypical ones with a dark central square so the classes
differ. AMi-Br, AtNorM-Br and AtNorM-MD folders, ``amibr_train_split.csv`` (half of the AMi-Br patches,
with slides), ``AtNorM-MD_expert_votes.csv`` and ``AMI-BR.csv`` with three expert votes: everything
``Store.import_dataset`` reads. Deterministic (seeded). ``train_slides`` spreads the training patches over
that many slides (the 5-fold slide-grouped split needs at least 5).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def png_bytes(rgb: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def write_example_benchmark(root: Path, n_per_class: int = 6, seed: int = 0, with_amibr_csv: bool = True,
                            train_slides: int | None = None) -> Path:
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
    if train_slides:  # spread the training patches over more slides (the 5-fold split needs >= 5)
        tr = pd.read_csv(bench / "amibr_train_split.csv", index_col=0)
        tr["slide"] = [f"s{u % train_slides}.tiff" for u in tr["uid"]]
        tr.to_csv(bench / "amibr_train_split.csv")
    if with_amibr_csv:
        pd.DataFrame(amibr_rows).to_csv(bench / "AMI-BR.csv")
    return bench
