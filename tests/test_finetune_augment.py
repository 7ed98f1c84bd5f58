"""Training augmentation: shapes, normalisation, seeded reproducibility, HED jitter bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mitoprobe.embedder.factory import preprocess
from mitoprobe.finetune.augment import hed_jitter, train_transform


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


def _batch(n=6, size=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, size=(n, 3, size, size), dtype=np.uint8))


def _batch_augment(**kw):
    from mitoprobe.finetune.augment import BatchAugment

    off = dict(crop_scale=(1.0, 1.0), hflip=False, color_jitter=None, rotate_degrees=0.0, dihedral=False, hed=0.0)
    return BatchAugment(preprocess("offline_cnn.random", (0.5,) * 3, (0.5,) * 3), **{**off, **kw})


def _unnormalised(aug, pixels, seed=0):
    return aug(pixels, torch.Generator().manual_seed(seed)) * 0.5 + 0.5


def test_batch_augment_is_seeded_shaped_and_in_range():
    aug = train = _batch_augment(crop_scale=(0.7, 1.0), hflip=True, dihedral=True, rotate_degrees=10,
                                 color_jitter=(0.2, 0.2, 0.1, 0.02), hed=0.05)
    px = _batch(size=96)
    a, b, c = (train(px, torch.Generator().manual_seed(s)) for s in (0, 0, 1))
    assert a.shape == (6, 3, aug.preprocess.input_size, aug.preprocess.input_size) and a.dtype == torch.float32
    assert float(a.min()) >= -1 - 1e-5 and float(a.max()) <= 1 + 1e-5
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_augment_with_everything_off_is_the_identity():
    px = _batch(size=80)  # the recipe's view size: no resampling
    np.testing.assert_allclose(_unnormalised(_batch_augment(), px), px.float() / 255, atol=1e-4)


def test_batch_augment_geometry_is_one_of_the_eight_dihedral_views():
    px = _batch(n=32, size=80)
    out = _unnormalised(_batch_augment(hflip=True, dihedral=True), px)
    seen = set()
    for x, y in zip(px.float() / 255, out):
        views = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
        match = [i for i, v in enumerate(views) if torch.allclose(v, y, atol=1e-4)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) >= 5  # the draws differ per sample


def test_batch_augment_colour_and_stain_vary_per_sample_but_keep_geometry():
    px = torch.full((8, 3, 80, 80), 128, dtype=torch.uint8)
    for kw in (dict(color_jitter=(0.3, 0.0, 0.0, 0.0)), dict(hed=0.1)):
        out = _unnormalised(_batch_augment(**kw), px)
        per_sample = out.mean((1, 2, 3))
        assert float(per_sample.std()) > 1e-3  # each sample drew its own factor
        assert float(out.std((2, 3)).max()) < 1e-4  # a flat patch stays flat: no geometric effect
        assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_stack_pixels_refuses_mixed_sizes_and_tensor_batches_cover_an_epoch():
    import io

    from PIL import Image

    from mitoprobe.finetune.data import stack_pixels, tensor_batches
    from mitoprobe.store.errors import FinetuneError

    def png(size):
        buf = io.BytesIO()
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    assert stack_pixels([png(20), png(20)]).shape == (2, 3, 20, 20)
    with pytest.raises(FinetuneError, match="one size"):
        stack_pixels([png(20), png(24)])
    px, y = _batch(n=10, size=80), np.arange(10) % 2
    ident = _batch_augment()
    epoch = list(tensor_batches(px, y, ident, 4, "shuffle", seed=3))
    assert [len(yb) for _, yb in epoch] == [4, 4, 2]
    got = torch.cat([xb for xb, _ in epoch]) * 0.5 + 0.5
    order = [int(np.flatnonzero([torch.allclose(g, p.float() / 255, atol=1e-4) for p in px])[0]) for g in got]
    assert sorted(order) == list(range(10))  # a shuffle: every patch once
    np.testing.assert_array_equal(torch.cat([yb for _, yb in epoch]).numpy(), y[order])
    soft = torch.cat([yb for _, yb in tensor_batches(px, y, ident, 4, "shuffle", seed=3, targets=y / 3)])
    np.testing.assert_allclose(soft.numpy(), y[order] / 3, rtol=1e-6)  # the same order, soft targets
    again = list(tensor_batches(px, y, ident, 4, "shuffle", seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch, again))
    weighted = torch.cat([yb for _, yb in tensor_batches(px, np.r_[np.ones(1), np.zeros(9)], ident, 5, "weighted", 0)])
    assert len(weighted) == 10  # class-balanced draws with replacement
