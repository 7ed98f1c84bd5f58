"""Handcrafted features of a mitotic-figure patch (scikit-image), deterministic, CPU-only.

Three groups, all computed per patch:

- **nucleus morphology**: haematoxylin channel (``rgb2hed``), smoothed, Otsu threshold; the
  connected component nearest the patch centre is the figure (``morphology.figure_mask``). Area, perimeter, eccentricity,
  solidity, extent, axis lengths, equivalent diameter, circularity, Euler number, the 7
  orientation-free Hu moments (log-scaled), mask fraction and component count;
- **H&E colour**: mean/std of R, G, B, H, E over the patch, H percentiles, and H/E inside versus
  outside the figure mask;
- **texture** on the central 64 px: grey-level co-occurrence props (averaged over 4 angles,
  2 distances) and a rotation-invariant uniform LBP histogram.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.measure import regionprops

from .morphology import figure_mask, morphology_features

GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
LBP_P, LBP_R = 8, 1
MORPH = ("area", "perimeter", "eccentricity", "solidity", "extent", "major_axis", "minor_axis",
         "equivalent_diameter", "circularity", "euler_number") + tuple(f"hu{i}" for i in range(7)) + (
    "mask_fraction", "n_components", "has_figure")
COLOUR = tuple(f"{s}_{c}" for c in ("r", "g", "b", "h", "e") for s in ("mean", "std")) + (
    "h_p10", "h_p50", "h_p90", "h_in", "h_out", "e_in", "e_out")
TEXTURE = tuple(f"glcm_{p}_d{d}" for d in (1, 2) for p in GLCM_PROPS) + tuple(f"lbp_{i}" for i in range(LBP_P + 2))
FEATURE_NAMES = MORPH + COLOUR + TEXTURE
N_FEATURES = len(FEATURE_NAMES)


def _morphology(mask: np.ndarray, n: int) -> list[float]:
    if not mask.any():
        return [0.0] * (len(MORPH) - 3) + [0.0, float(n), 0.0]
    p = regionprops(mask.astype(np.uint8))[0]
    per = float(p.perimeter)
    hu = np.asarray(p.moments_hu, float)
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-12)
    circ = 4 * np.pi * p.area / per**2 if per > 0 else 0.0
    return [float(p.area), per, float(p.eccentricity), float(p.solidity), float(p.extent),
            float(p.axis_major_length), float(p.axis_minor_length), float(p.equivalent_diameter_area),
            float(circ), float(p.euler_number), *hu.tolist(), float(mask.mean()), float(n), 1.0]


def _colour(rgb: np.ndarray, hed: np.ndarray, mask: np.ndarray) -> list[float]:
    chans = [rgb[..., 0], rgb[..., 1], rgb[..., 2], hed[..., 0], hed[..., 1]]
    out: list[float] = []
    for c in chans:
        out += [float(c.mean()), float(c.std())]
    h, e = hed[..., 0], hed[..., 1]
    out += np.percentile(h, (10, 50, 90)).tolist()
    inside, outside = mask, ~mask
    out += [float(h[inside].mean()) if inside.any() else float(h.mean()),
            float(h[outside].mean()) if outside.any() else float(h.mean()),
            float(e[inside].mean()) if inside.any() else float(e.mean()),
            float(e[outside].mean()) if outside.any() else float(e.mean())]
    return out


def _texture(grey: np.ndarray) -> list[float]:
    s = grey.shape[0]
    g = grey[s // 2 - 32:s // 2 + 32, s // 2 - 32:s // 2 + 32]
    q = (g.astype(np.uint16) * 32 // 256).astype(np.uint8)
    glcm = graycomatrix(q, distances=[1, 2], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32,
                        symmetric=True, normed=True)
    out: list[float] = []
    for d in range(2):
        out += [float(graycoprops(glcm, p)[d].mean()) for p in GLCM_PROPS]
    lbp = local_binary_pattern(g, LBP_P, LBP_R, method="uniform")
    hist = np.bincount(lbp.astype(np.int64).ravel(), minlength=LBP_P + 2)[:LBP_P + 2]
    return out + (hist / hist.sum()).tolist()


def handcrafted_features(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (N_FEATURES,) float32, finite."""
    rgbf = rgb.astype(np.float32) / 255.0
    hed = rgb2hed(rgb)
    h = ndi.gaussian_filter(hed[..., 0], 1.0)
    mask, n = figure_mask(h)
    grey = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
    v = np.asarray(_morphology(mask, n) + _colour(rgbf, hed, mask) + _texture(grey), np.float64)
    return np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


# -- which feature set a handcrafted recipe computes ------------------------------------------------
# Recipes with ``arch="handcrafted"`` share every code path of a torch-free embedder (batching, workers,
# provenance packages, "no network to fine-tune"); the recipe's ``features`` kwarg picks the function.
# No kwarg = the full set, so the ``handcrafted`` recipe (and its id) stays as it was.
FEATURE_SETS = {"all": handcrafted_features, "morphology": morphology_features}


class FeatureTransform:
    """Picklable worker-side transform of a handcrafted recipe: pixels -> its feature vector."""

    def __init__(self, features: str = "all"):
        if features not in FEATURE_SETS:
            raise ValueError(f"unknown handcrafted feature set {features!r}; choose from {sorted(FEATURE_SETS)}")
        self.features = features

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return FEATURE_SETS[self.features](rgb)


def feature_transform(recipe_kwargs: dict) -> FeatureTransform:
    """The transform for a handcrafted recipe's kwargs (``{"features": "morphology"}``; none: the full set)."""
    return FeatureTransform(recipe_kwargs.get("features", "all"))
