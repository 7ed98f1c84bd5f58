"""Training augmentation: (H, W, 3) uint8 patch -> normalised (3, S, S) float32 tensor.

Made by :func:`train_transform` from the recipe's evaluation ``Preprocess`` (``embedder.factory.preprocess``; input size
and normalisation come from there). Order: RandomResizedCrop(S, scale) on the 128 px patch (the
paper's LoRA scripts crop the raw patch, which upsamples it to 224), or with ``crop_from="view"`` on
the recipe's evaluation view (e.g. its centre crop, so training sees what inference sees) -> horizontal flip -> optional
dihedral (vertical flip + 90-degree turns) -> optional small rotation -> ColorJitter -> optional HED
stain jitter -> normalise. Randomness comes from torch's global generator (seeded per DataLoader
worker, and per epoch by the trainer), so a seeded run is reproducible.
"""

from __future__ import annotations

import numpy as np

from embedder.factory import preprocess

# Ruifrok & Johnston's H&E-DAB stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image uses.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32)
_RGB_FROM_HED[2] = np.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED /= np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


def hed_jitter(x, sigma: float, generator=None):
    """Scale and shift each stain's optical density by ``1 + U(-s, s)`` and ``U(-s, s)``.

    ``x``: (3, H, W) float tensor in [0, 1]; returns the same shape in [0, 1].
    """
    import torch

    c, h, w = x.shape
    od = -torch.log(x.clamp_min(1e-6)).reshape(3, -1).T  # (HW, 3) optical density
    hed = od @ torch.from_numpy(_HED_FROM_RGB)
    alpha = 1 + (torch.rand(3, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(3, generator=generator) * 2 - 1) * sigma
    hed = hed * alpha + beta
    rgb = torch.exp(-(hed @ torch.from_numpy(_RGB_FROM_HED)))
    return rgb.T.reshape(c, h, w).clamp(0, 1)


class TrainTransform:
    """Picklable (DataLoader workers) training transform; see the module docstring."""

    def __init__(self, preprocess, crop_scale=(0.8, 1.0), hflip=True, color_jitter=(0.2, 0.2, 0.2, 0.1),
                 rotate_degrees=0.0, dihedral=False, hed=0.0, crop_from="patch"):
        self.preprocess = preprocess
        self.crop_from = crop_from
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.color_jitter = tuple(color_jitter) if color_jitter else None
        self.rotate_degrees = float(rotate_degrees)
        self.dihedral = dihedral
        self.hed = float(hed)
        self._ops = None

    def _build(self):
        from torchvision.transforms import v2

        s = self.preprocess.input_size
        ops = [v2.RandomResizedCrop(s, scale=self.crop_scale, antialias=True)]
        if self.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if self.dihedral:
            ops.append(v2.RandomVerticalFlip())
        if self.rotate_degrees:
            ops.append(v2.RandomRotation(self.rotate_degrees))
        if self.color_jitter:
            b, c, sat, hue = self.color_jitter
            ops.append(v2.ColorJitter(brightness=b, contrast=c, saturation=sat, hue=hue))
        return v2.Compose(ops)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ops"} | {"_ops": None}

    def __call__(self, rgb: np.ndarray):
        import torch

        if self._ops is None:
            self._ops = self._build()
        if self.crop_from == "view":
            rgb = self.preprocess.geometry(rgb)
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # (3, H, W) uint8
        x = self._ops(x)
        if self.dihedral:
            k = int(torch.randint(0, 4, ()).item())
            x = torch.rot90(x, k, dims=(-2, -1)) if k else x
        x = x.float() / 255.0
        if self.hed:
            x = hed_jitter(x, self.hed)
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()


def train_transform(recipe, mean=None, std=None, **augment) -> TrainTransform:
    """The fine-tuning training transform at the recipe's input size, normalised by ``mean``/``std``."""
    return TrainTransform(preprocess(recipe, mean, std), **augment)
