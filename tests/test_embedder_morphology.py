"""Morphology features: the shape of the central figure only (finite, deterministic, orientation-free,
colour-free), fragments near the centre counted, and the recipe wired through the handcrafted path."""

from __future__ import annotations

import numpy as np
import pytest

from mitoprobe import embedder
from mitoprobe.embedder.handcrafted import FEATURE_SETS, FeatureTransform, feature_transform, handcrafted_features
from mitoprobe.embedder.morphology import FEATURE_NAMES, N_FEATURES, morphology_features
from mitoprobe.embedder.recipes import get_recipe


def _paint(masks, seed=0, colour=(70, 40, 120), background=(235, 180, 210)):
    rng = np.random.default_rng(seed)
    img = np.empty((128, 128, 3), np.float64)
    img[:] = background
    for m in masks:
        img[m] = colour
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


YY, XX = np.indices((128, 128)) - 63.5
DISC = YY**2 + XX**2 <= 15**2
ELLIPSE = (YY / 8) ** 2 + (XX / 28) ** 2 <= 1
# a "multipolar" figure: three chromosome clumps around the centre instead of one plate
CLUMPS = [(YY - dy) ** 2 + (XX - dx) ** 2 <= 6**2 for dy, dx in ((-12, 0), (8, -11), (8, 11))]


def _f(img):
    return dict(zip(FEATURE_NAMES, morphology_features(img)))


def test_dims_finite_deterministic_and_blank():
    img = _paint([DISC])
    a, b = morphology_features(img), morphology_features(img)
    assert a.shape == (N_FEATURES,) == (get_recipe("morphology").output_dims["vector"],)
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.array_equal(a, b)
    blank = morphology_features(np.full((128, 128, 3), 200, np.uint8))
    assert np.isfinite(blank).all() and dict(zip(FEATURE_NAMES, blank))["has_figure"] == 0


def test_shape_of_the_central_figure():
    d, e = _f(_paint([DISC])), _f(_paint([ELLIPSE]))
    assert abs(d["area"] - DISC.sum()) / DISC.sum() < 0.1 and d["eccentricity"] < 0.3 and d["solidity"] > 0.95
    assert 0.9 < d["convexity"] <= 1.05 and d["axis_ratio"] > 0.9 and d["n_near"] == 1
    assert e["eccentricity"] > 0.9 and e["axis_ratio"] < 0.4 and e["feret_diameter"] > 50


def test_orientation_and_colour_free():
    ell = _paint([ELLIPSE])
    rot = _f(np.ascontiguousarray(np.rot90(ell)))
    g = _f(ell)
    for k in ("area", "eccentricity", "solidity", "axis_ratio", "hu0", "hu1", "n_near"):
        assert abs(rot[k] - g[k]) <= 1e-3 * max(1.0, abs(g[k])), k
    other_site = _f(_paint([ELLIPSE], colour=(110, 60, 150), background=(245, 200, 225)))  # paler stain
    for k in ("area", "eccentricity", "axis_ratio", "n_near"):
        assert abs(other_site[k] - g[k]) <= 0.05 * max(1.0, abs(g[k])), k


def test_fragments_near_the_centre_are_counted():
    one, three = _f(_paint([DISC])), _f(_paint(CLUMPS))
    assert three["n_near"] == 3 and one["n_near"] == 1
    assert three["near_area_fraction"] > 2 and three["near_union_solidity"] < 0.8 < one["near_union_solidity"]


def test_recipe_dispatch_through_the_handcrafted_path():
    recipe = get_recipe("morphology")
    assert recipe.arch == "handcrafted" and recipe.weights == "none"
    assert "features" not in get_recipe("handcrafted").model_kwargs  # the full set's id is unchanged
    img = _paint([ELLIPSE])
    t = feature_transform(recipe.model_kwargs)
    assert isinstance(t, FeatureTransform) and np.array_equal(t(img), morphology_features(img))
    assert np.array_equal(feature_transform({})(img), handcrafted_features(img))
    with pytest.raises(ValueError, match="morphology"):
        FeatureTransform("nope")
    assert set(FEATURE_SETS) == {"all", "morphology"}


def test_build_gives_the_morphology_transform():
    _, transform = embedder.build("morphology")
    img = _paint([CLUMPS[0], CLUMPS[1]])
    assert np.array_equal(transform(img), morphology_features(img))
