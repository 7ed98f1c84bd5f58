"""Training augmentation: shapes, normalisation, seeded reproducibility, HED jitter bounds."""

from __future__ import annotations

import numpy as np
import torch

from embedder.factory import preprocess
from finetune.augment import hed_jitter, train_transform


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, size=(128, 128, 3), dtype=np.uint8)


def test_train_transform_shape_norm_and_seeding():
    tf = train_transform("virchow2.hf", (0.5,) * 3, (0.5,) * 3, dihedral=True, hed=0.05)
    assert tf.preprocess.input_size == 224 and tf.preprocess.mean == (0.5, 0.5, 0.5)
    torch.manual_seed(0)
    a = tf(_rgb())
    torch.manual_seed(0)
    b = tf(_rgb())
    torch.manual_seed(1)
    c = tf(_rgb())
    assert a.shape == (3, 224, 224) and a.dtype == torch.float32
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6  # mean = std = 0.5 -> [-1, 1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eval_preprocess_keeps_recipe_geometry_with_paper_norm():
    p = preprocess("virchow2.hf", (0.5,) * 3, (0.5,) * 3)
    x = p(np.full((128, 128, 3), 255, np.uint8))
    assert x.shape == (3, 224, 224) and np.allclose(x, 1.0)


def test_hed_jitter_zero_is_identity_and_stays_in_range():
    x = torch.rand(3, 16, 16) * 0.9 + 0.05
    assert torch.allclose(hed_jitter(x, 0.0), x, atol=1e-4)
    y = hed_jitter(x, 0.2)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 and not torch.allclose(y, x)
