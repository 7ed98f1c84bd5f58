"""A synthetic cohort of N distinct mitosis patches made from the real AMi-Br ones, for scale benchmarks.

Patch i is made from source patch ``perm[i % n_src]`` (a seeded permutation of the AMi-Br
``{Atypical,Normal}`` PNGs) by a transform seeded by (seed, i): one of the 8 dihedral views, a small
per-channel colour shift (+-6 levels) and a few (8-24) pixels of uniform noise, so every patch is a
distinct image (and none is byte-identical to a benchmark patch) while looking like a real mitosis.
The label is the source folder's; the slide is ``<prefix>-S<i // per_slide>`` (default 50 patches per
slide); the split is ``--split`` (train / test) or ``mixed`` (a seeded ``--test-frac`` of the slides are
test). Images are written one by one (streaming: one image in memory at a time) under
``OUT/images/<i // 1000>/``; the manifest ``OUT/manifest.csv`` (path, label, slide, split) is the layout
``mitoprobe data import --manifest OUT/manifest.csv --dataset NAME`` accepts.

Example: python -m benchmarks.synthetic_cohort --n 65730 --out /tmp/cohort-x10 --seed 0 --split train
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .machine import header

DEFAULT_SRC = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "AMi-Br_Benchmark" / "AMi-Br"
LABELS = {"Atypical": "atypical", "Normal": "normal"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def source_patches(src: Path) -> list[tuple[Path, str]]:
    """(path, label) of every source patch, sorted (deterministic)."""
    out = []
    for folder, label in LABELS.items():
        d = src / folder
        if not d.is_dir():
            raise SystemExit(f"{d}: not a folder (expected {src}/{{Atypical,Normal}}/*.png; use --src)")
        out += [(p, label) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXT]
    if not out:
        raise SystemExit(f"{src}: no images under Atypical/ or Normal/")
    return out


def transform(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random dihedral view + a small colour shift + a few noisy pixels (uint8 HxWx3 in, out)."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    a = np.rot90(arr, k)
    if flip:
        a = a[:, ::-1]
    a = a.astype(np.int16) + rng.integers(-6, 7, size=3, dtype=np.int16)  # per-channel shift
    n_noise = int(rng.integers(8, 25))
    ys, xs = rng.integers(a.shape[0], size=n_noise), rng.integers(a.shape[1], size=n_noise)
    a[ys, xs] = rng.integers(0, 256, size=(n_noise, 3), dtype=np.int16)
    return np.ascontiguousarray(np.clip(a, 0, 255).astype(np.uint8))


def generate(n: int, out: Path, seed: int = 0, src: Path = DEFAULT_SRC, split: str = "train",
             per_slide: int = 50, test_frac: float = 0.2, slide_prefix: str = "SYN",
             progress: bool = True) -> Path:
    """Write N patches and OUT/manifest.csv; return the manifest's path."""
    sources = source_patches(Path(src))
    perm = np.random.default_rng(seed).permutation(len(sources))
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_slides = (n + per_slide - 1) // per_slide
    test_slides = set()
    if split == "mixed":
        srng = np.random.default_rng([seed, 1])
        test_slides = set(srng.choice(n_slides, size=max(1, round(test_frac * n_slides)), replace=False).tolist())
    manifest = out / "manifest.csv"
    tmp = manifest.with_suffix(".csv.part")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "slide", "split", "source"])
        for i in tqdm(range(n), desc=f"synthetic cohort -> {out}", unit="patch", disable=not progress,
                      mininterval=1.0):
            p, label = sources[perm[i % len(sources)]]
            rng = np.random.default_rng([seed, i])
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
            rel = f"images/{i // 1000:04d}/{i:07d}.png"
            dst = out / rel
            if i % 1000 == 0:
                dst.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(transform(arr, rng)).save(dst, compress_level=6)
            s = i // per_slide
            sp = ("test" if s in test_slides else "train") if split == "mixed" else split
            w.writerow([rel, label, f"{slide_prefix}-S{s:05d}", sp, p.name])
    tmp.replace(manifest)  # the manifest appears only once every image is written
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, required=True, help="number of patches")
    ap.add_argument("--out", type=Path, required=True, help="output folder (images/ + manifest.csv)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with Atypical/ and Normal/ PNGs")
    ap.add_argument("--split", choices=["train", "test", "mixed"], default="train")
    ap.add_argument("--test-frac", type=float, default=0.2, help="share of slides that are test (--split mixed)")
    ap.add_argument("--per-slide", type=int, default=50, help="patches per slide")
    ap.add_argument("--slide-prefix", default="SYN")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    m = generate(a.n, a.out, a.seed, a.src, a.split, a.per_slide, a.test_frac, a.slide_prefix, not a.no_progress)
    dt = time.perf_counter() - t0
    print(header())
    print(f"wrote {a.n:,} patches and {m} in {dt:.1f} s ({a.n / max(dt, 1e-9):,.0f} patches/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
