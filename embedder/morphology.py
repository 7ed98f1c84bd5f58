"""Nucleus-morphology features of a mitotic figure: the shape of the central haematoxylin component only.

Why a set of its own: the 57-d ``handcrafted`` set mixes shape with H&E colour and texture, and colour
and texture are site-specific (at chance on AtNorM-MD, other species and scanners), while the figure's
shape is what tells an atypical mitosis (multipolar, lagging chromosomes, asymmetric) from a normal one.
Shape alone with LightGBM scored 0.678 / 0.735 / 0.684 balanced accuracy outside the project, above the
full handcrafted set on AtNorM-MD (0.637); and its probability fused with the CNN's is the best late
fusion measured (issue 13).

The figure is found once, here (:func:`figure_mask`, also used by ``embedder.handcrafted``): the
haematoxylin channel (``rgb2hed``), smoothed, Otsu-thresholded, opened; the connected component nearest
the patch centre. Every feature is orientation-free and intensity-free (nothing but the binary mask is
measured), and finite for a patch without any figure (``has_figure`` = 0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.measure import perimeter as mask_perimeter
from skimage.measure import regionprops

NEAR_PX = 20  # components reaching within this distance of the centre belong to the figure's neighbourhood
SHAPE = ("area", "perimeter", "convex_area", "convex_perimeter", "eccentricity", "solidity", "convexity", "extent",
         "major_axis", "minor_axis", "axis_ratio", "equivalent_diameter", "circularity", "feret_diameter",
         "euler_number") + tuple(f"hu{i}" for i in range(7))
# fragments near the centre: separated chromosome groups (multipolar, lagging, anaphase bridges) are several
# components where a normal metaphase is one
NEIGHBOURHOOD = ("n_near", "near_area_fraction", "near_union_solidity", "centroid_offset")
FEATURE_NAMES = SHAPE + NEIGHBOURHOOD + ("n_components", "has_figure")
N_FEATURES = len(FEATURE_NAMES)


def haematoxylin(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H&E-D stain map, smoothed haematoxylin channel) of an (H, W, 3) uint8 patch."""
    hed = rgb2hed(rgb)
    return hed, ndi.gaussian_filter(hed[..., 0], 1.0)


def _labels(h: np.ndarray) -> tuple[np.ndarray, int]:
    if float(h.max() - h.min()) < 1e-6:
        return np.zeros(h.shape, np.int32), 0
    fg = ndi.binary_opening(h > threshold_otsu(h), iterations=1)
    return ndi.label(fg)


def _centre_distances(labels: np.ndarray, n: int) -> np.ndarray:
    """Each component's smallest distance to the patch centre (pixels)."""
    c = (np.array(labels.shape) - 1) / 2.0
    yy, xx = np.indices(labels.shape)
    return np.asarray(ndi.minimum(np.hypot(yy - c[0], xx - c[1]), labels, index=np.arange(1, n + 1)), float)


def figure_mask(h: np.ndarray) -> tuple[np.ndarray, int]:
    """The component of the thresholded haematoxylin map nearest the centre; (mask, n_components)."""
    labels, n = _labels(h)
    if n == 0:
        return labels > 0, 0
    return labels == (int(np.argmin(_centre_distances(labels, n))) + 1), n


def _hu(p) -> list[float]:
    hu = np.asarray(p.moments_hu, float)
    return (-np.sign(hu) * np.log10(np.abs(hu) + 1e-12)).tolist()


def _shape(mask: np.ndarray) -> list[float]:
    p = regionprops(mask.astype(np.uint8))[0]
    per = float(p.perimeter)
    hull = p.image_convex
    hull_per = float(mask_perimeter(hull))
    major, minor = float(p.axis_major_length), float(p.axis_minor_length)
    return [float(p.area), per, float(p.area_convex), hull_per, float(p.eccentricity), float(p.solidity),
            hull_per / per if per > 0 else 0.0, float(p.extent), major, minor, minor / major if major > 0 else 0.0,
            float(p.equivalent_diameter_area), 4 * np.pi * p.area / per**2 if per > 0 else 0.0,
            float(p.feret_diameter_max), float(p.euler_number), *_hu(p)]


def _neighbourhood(labels: np.ndarray, n: int, mask: np.ndarray) -> list[float]:
    near = np.flatnonzero(_centre_distances(labels, n) <= NEAR_PX) + 1
    union = np.isin(labels, near) if len(near) else mask
    u = regionprops(union.astype(np.uint8))[0]
    c = (np.array(mask.shape) - 1) / 2.0
    offset = float(np.hypot(*(np.asarray(regionprops(mask.astype(np.uint8))[0].centroid) - c)))
    return [float(len(near)), float(union.sum()) / max(float(mask.sum()), 1.0), float(u.solidity), offset]


def morphology_from_h(h: np.ndarray) -> np.ndarray:
    """The features of a smoothed haematoxylin map (``haematoxylin(rgb)[1]``)."""
    labels, n = _labels(h)
    if n == 0:
        return np.zeros(N_FEATURES, np.float32)
    mask = labels == (int(np.argmin(_centre_distances(labels, n))) + 1)
    v = np.asarray(_shape(mask) + _neighbourhood(labels, n, mask) + [float(n), 1.0], np.float64)
    return np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def morphology_features(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (N_FEATURES,) float32, finite, deterministic."""
    return morphology_from_h(haematoxylin(rgb)[1])
