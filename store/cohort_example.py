"""A small synthetic cohort in the manifest layout: what the README's tour and the tests import.

Not pathology: pink-noise patches with a dark central "figure" (round for normal, split into
fragments for atypical), in the shapes a lab's export takes: JPEG and PNG, sizes other than
AMi-Br's 128 px, some patches unlabelled, a manifest with slides, a split column and an extra
metadata column. Deterministic (seeded), so a test can assert on what it imports.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MANIFEST = "manifest.csv"


def _patch(rng: np.random.Generator, size: tuple[int, int], atypical: bool) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[...] = (236, 190, 214)
    img = np.clip(img + rng.normal(0, 14, img.shape), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r = min(w, h) / 9
    centres = [(w / 2, h / 2)] if not atypical else [
        (w / 2 + dx * r * 1.6, h / 2 + dy * r * 1.6) for dx, dy in rng.uniform(-1, 1, size=(3, 2))]
    for cx, cy in centres:
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < (r * (0.8 if atypical else 1.2)) ** 2
        img[blob] = (np.array([70, 40, 110]) + rng.normal(0, 10, (int(blob.sum()), 3))).clip(0, 255)
    return img


def write_example_cohort(dest: str | Path, seed: int = 0) -> Path:
    """Write the example cohort under ``dest`` (images in ``dest/images``) and return its manifest."""
    dest = Path(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    plan = ([("jpg", (160, 160), lab) for lab in ("atypical", "normal") * 5]
            + [("png", (96, 96), lab) for lab in ("AMF", "NMF") * 3]
            + [("png", (200, 150), "") for _ in range(4)])
    for i, (fmt, size, label) in enumerate(plan):
        atypical = label.lower() in ("atypical", "amf") or (label == "" and i % 2 == 0)
        img = Image.fromarray(_patch(rng, size, atypical))
        name = f"images/patch_{i:03d}.{fmt}"
        buf = io.BytesIO()
        img.save(buf, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": 92} if fmt == "jpg" else {}))
        (dest / name).write_bytes(buf.getvalue())
        rows.append(dict(path=name, label=label, slide=f"slide-{i % 4}", split="test",
                         x=100 + 10 * i, y=200 + 5 * i, scanner="ScannerX" if i % 2 else "ScannerY"))
    manifest = dest / MANIFEST
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
