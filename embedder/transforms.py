"""Preprocessing made from a recipe: PNG bytes -> normalised (3, S, S) float32 array.

Runs in DataLoader workers (plain numpy + PIL, picklable). Geometry follows the recipe:
``upsample`` = PIL resize to ``resize`` then centre crop ``input_size``; ``native`` = 1:1 pixels,
centre-placed on an ``input_size`` canvas (reflect padding) or centre-cropped when smaller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from store.dataset import open_image

from .recipes import Recipe

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def decode_png(data: bytes, name: str = "image") -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB; refuses an image above the store's pixel limit from its
    header, before decoding (stored patches passed the import's checks; this guards every other way
    in, e.g. a dashboard upload, so no caller decodes a decompression bomb)."""
    with open_image(data, name, "use a 128x128 RGB PNG patch") as im:
        return np.asarray(im.convert("RGB"))


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top:top + size, left:left + size]


@dataclass(frozen=True)
class Preprocess:
    input_size: int
    resize: int
    interpolation: str
    placement: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_recipe(cls, r: Recipe) -> "Preprocess":
        return cls(r.input_size, r.resize, r.interpolation, r.placement, r.mean, r.std)

    def geometry(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (input_size, input_size, 3) uint8."""
        s = self.input_size
        if self.placement == "upsample":
            if rgb.shape[0] != self.resize or rgb.shape[1] != self.resize:
                im = Image.fromarray(rgb).resize((self.resize, self.resize), _INTERP[self.interpolation])
                rgb = np.asarray(im)
            return _center_crop(rgb, s)
        h, w = rgb.shape[:2]
        if h < s or w < s:
            ph, pw = max(0, s - h), max(0, s - w)
            rgb = np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
        return _center_crop(rgb, s)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) float32, normalised."""
        x = self.geometry(rgb).astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
