"""Test-time-augmentation views: the 8 dihedral transforms of a square patch.

``flip`` is a left-right mirror; ``rotK`` turns K degrees counter-clockwise; ``flip_rotK`` mirrors
first, then turns. Views commute with square resize/crop/pad, so neural embedders apply them to the
preprocessed tensor on the device; the handcrafted embedder applies them to the pixels.
"""

from __future__ import annotations

import numpy as np

from mitoprobe.store.errors import RecipeError

VIEWS_NONE = ("none",)
VIEWS_D8 = ("none", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")
VIEW_SETS = {"none": VIEWS_NONE, "d8": VIEWS_D8}


def view_names(views: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(views, str):
        if views not in VIEW_SETS:
            raise RecipeError(f"unknown view set {views!r}; use one of {sorted(VIEW_SETS)}")
        return VIEW_SETS[views]
    bad = [v for v in views if v not in VIEWS_D8]
    if bad:
        raise RecipeError(f"unknown views {bad}; known: {VIEWS_D8}")
    return tuple(views)


def _parse(view: str) -> tuple[bool, int]:
    flip = view.startswith("flip")
    rot = view.split("rot")[-1] if "rot" in view else "0"
    return flip, int(rot) // 90


def apply_view_np(img: np.ndarray, view: str) -> np.ndarray:
    """``img`` (H, W, C) -> the view (H, W, C)."""
    flip, k = _parse(view)
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, k, axes=(0, 1)))


def apply_view_torch(x, view: str):
    """``x`` (B, C, H, W) tensor -> the view, same shape."""
    flip, k = _parse(view)
    if flip:
        x = x.flip(-1)
    return x.rot90(k, dims=(-2, -1)) if k else x
