"""Preprocessing made from a recipe: PNG bytes -> normalised (3, S, S) float32 array.

Runs in DataLoader workers (plain numpy + PIL, picklable). Geometry follows the recipe, for a
patch of any size and aspect:

* ``upsample``: PIL resize of the *short side* to ``resize`` (the long side scaled alike, truncated
  as torchvision's ``Resize(int)`` does), then centre crop ``input_size``. A square patch (every
  benchmark patch) is resized to ``resize x resize`` exactly as before, so stored vectors do not
  change; a 200x150 patch is no longer squashed, its long side is cropped instead.
* ``native``: 1:1 pixels, centre-placed on an ``input_size`` canvas (reflect padding), or
  centre-cropped where the patch is larger, per side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mitoprobe.store.dataset import open_image

from .recipes import Recipe

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
INTERPOLATIONS = tuple(_INTERP)


def decode_png(data: bytes, name: str = "image") -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB; refuses an image above the store's pixel limit from its
    header, before decoding (stored patches passed the import's checks; this guards every other way
    in, e.g. a dashboard upload, so no caller decodes a decompression bomb)."""
    with open_image(data, name, "use a 128x128 RGB PNG patch") as im:
        return np.asarray(im.convert("RGB"))


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` (each side already at least ``size``), offsets rounded as
    torchvision's ``CenterCrop`` rounds them (an odd margin puts the extra pixel where it does)."""
    h, w = a.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side ``short`` and the aspect kept: torchvision ``Resize(int)``
    semantics (the long side ``int(short * long / short_side)``, truncated)."""
    if h <= w:
        return short, int(short * w / h)
    return int(short * h / w), short


def _pad_to(rgb: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad each side shorter than ``size`` to ``size``, the patch centred (numpy repeats the
    reflection when a pad is wider than the patch, so any small patch works)."""
    h, w = rgb.shape[:2]
    if h >= size and w >= size:
        return rgb
    ph, pw = max(0, size - h), max(0, size - w)
    mode = "reflect" if min(h, w) > 1 else "edge"  # a 1-px side has nothing to reflect
    return np.pad(rgb, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode=mode)


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
            h, w = short_side_size(rgb.shape[0], rgb.shape[1], self.resize)
            if (h, w) != rgb.shape[:2]:
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), _INTERP[self.interpolation]))
            return _center_crop(rgb, s)
        return _center_crop(_pad_to(rgb, s), s)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) float32, normalised."""
        x = self.geometry(rgb).astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
