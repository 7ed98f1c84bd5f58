"""Handcrafted features: finite, deterministic, and the morphology measures the central figure."""

from __future__ import annotations

import numpy as np

from mitoprobe.embedder.handcrafted import FEATURE_NAMES, N_FEATURES, handcrafted_features
from mitoprobe.embedder.recipes import get_recipe


def _figure(shape="disc", seed=0):
    """Pink background with a dark-purple (haematoxylin-like) figure at the centre."""
    rng = np.random.default_rng(seed)
    img = np.empty((128, 128, 3), np.float64)
    img[:] = (235, 180, 210)
    yy, xx = np.indices((128, 128)) - 63.5
    mask = (yy**2 + xx**2 <= 15**2) if shape == "disc" else ((yy / 8) ** 2 + (xx / 28) ** 2 <= 1)
    img[mask] = (70, 40, 120)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), int(mask.sum())


def _f(v):
    return dict(zip(FEATURE_NAMES, v))


def test_dims_finite_deterministic():
    img, _ = _figure()
    a, b = handcrafted_features(img), handcrafted_features(img)
    assert a.shape == (N_FEATURES,) == (get_recipe("handcrafted").output_dims["vector"],)
    assert np.isfinite(a).all() and np.array_equal(a, b)
    blank = np.full((128, 128, 3), 200, np.uint8)  # no figure at all: still finite, flagged
    f = _f(handcrafted_features(blank))
    assert f["has_figure"] == 0 and np.isfinite(list(f.values())).all()


def test_morphology_of_the_central_figure():
    disc, area = _figure("disc")
    f = _f(handcrafted_features(disc))
    assert f["has_figure"] == 1 and abs(f["area"] - area) / area < 0.1
    assert f["eccentricity"] < 0.3 and f["solidity"] > 0.95 and f["h_in"] > f["h_out"]
    ell, _ = _figure("ellipse")
    g = _f(handcrafted_features(ell))
    assert g["eccentricity"] > 0.9 and g["major_axis"] > 2.5 * g["minor_axis"]
    rot = _f(handcrafted_features(np.ascontiguousarray(np.rot90(ell))))  # orientation-free shape measures
    for k in ("area", "eccentricity", "solidity", "hu0", "hu1"):
        assert abs(rot[k] - g[k]) <= 1e-3 * max(1.0, abs(g[k]))
