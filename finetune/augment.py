"""Training augmentation: (H, W, 3) uint8 patch -> normalised (3, S, S) float32 tensor.

Made by :func:`train_transform` from the run's evaluation ``Preprocess`` (``FinetuneConfig.eval_preprocess``: input
size, evaluation geometry and normalisation come from there). The geometry follows ``train_crop``:

* ``"random"``: RandomResizedCrop(S, scale) on the 128 px patch (the paper's LoRA scripts crop the raw patch,
  which upsamples it to 224), or with ``crop_from="view"`` on the evaluation view, first;
* ``"none"``: the evaluation geometry (resize + centre crop), no random crop (H-optimus-1, UNI2-h);
* ``"last"``: the evaluation geometry first, RandomResizedCrop(S, scale) after the colour jitter (end-to-end).

Then horizontal flip -> optional vertical flip -> optional rotation -> ColorJitter -> [the "last" crop] ->
optional quarter turns -> optional HED stain jitter -> normalise. The per-sample pipeline runs torchvision's
ops on the PIL image, as the paper's scripts do (``transforms.Compose`` on ``Image.open(...)``), so under the
same torch seed it gives the scripts' exact tensors (tests/test_finetune_paper.py). Randomness comes from torch's
global generator (seeded per DataLoader worker, and per epoch by the trainer), so a seeded run is reproducible.
"""

from __future__ import annotations

import numpy as np

from mitoprobe.embedder.factory import preprocess
from mitoprobe.store.errors import FinetuneError

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


class _Augmentation:
    """The augmentation settings both pipelines share (per sample: ``TrainTransform``; batched: ``BatchAugment``)."""

    def __init__(self, preprocess, train_crop="random", crop_scale=(0.8, 1.0), hflip=True,
                 color_jitter=(0.2, 0.2, 0.2, 0.1), rotate_degrees=0.0, dihedral=False, hed=0.0):
        self.preprocess = preprocess
        self.train_crop = train_crop
        self.crop_scale = tuple(crop_scale)
        self.hflip = hflip
        self.color_jitter = tuple(color_jitter) if color_jitter else None
        self.rotate_degrees = float(rotate_degrees)
        self.dihedral = dihedral
        self.hed = float(hed)


class TrainTransform(_Augmentation):
    """Picklable (DataLoader workers) training transform; see the module docstring."""

    def __init__(self, preprocess, crop_from="patch", **augment):
        super().__init__(preprocess, **augment)
        self.crop_from = crop_from
        self._ops = None

    def _build(self):
        from torchvision.transforms import v2

        s = self.preprocess.input_size
        crop = v2.RandomResizedCrop(s, scale=self.crop_scale, antialias=True)
        ops = [crop] if self.train_crop == "random" else []
        if self.hflip:
            ops.append(v2.RandomHorizontalFlip())
        if self.dihedral:
            ops.append(v2.RandomVerticalFlip())
        if self.rotate_degrees:
            ops.append(v2.RandomRotation(self.rotate_degrees))
        if self.color_jitter and any(self.color_jitter):
            b, c, sat, hue = self.color_jitter
            ops.append(v2.ColorJitter(brightness=b or None, contrast=c or None, saturation=sat or None, hue=hue or None))
        if self.train_crop == "last":
            ops.append(crop)
        return v2.Compose(ops) if ops else None

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_ops"} | {"_ops": None}

    def __call__(self, rgb: np.ndarray):
        import torch
        from PIL import Image

        if self._ops is None:
            self._ops = self._build() or (lambda im: im)
        if self.crop_from == "view" or self.train_crop != "random":
            rgb = self.preprocess.geometry(rgb)
        im = self._ops(Image.fromarray(np.ascontiguousarray(rgb)))  # PIL in, PIL out: the scripts' kernels
        x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1)  # (3, H, W) uint8
        if self.dihedral:
            k = int(torch.randint(0, 4, ()).item())
            x = torch.rot90(x, k, dims=(-2, -1)) if k else x
        x = x.float() / 255.0
        if self.hed:
            x = hed_jitter(x, self.hed)
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()


def train_transform(recipe, mean=None, std=None, *, eval_preprocess=None, **augment) -> TrainTransform:
    """The fine-tuning training transform at the recipe's input size, normalised by ``mean``/``std``
    (``eval_preprocess``: the run's evaluation transform, whose geometry ``train_crop`` may reuse)."""
    return TrainTransform(eval_preprocess or preprocess(recipe, mean, std), **augment)


class BatchAugment(_Augmentation):
    """The augmentations of :class:`TrainTransform`, drawn per sample but applied to a whole batch.

    Why: on a 2-core CPU the per-sample pipeline (torchvision ops + HED jitter, ~9 ms an image at 80 px)
    costs more than the small CNN's training step, so a DataLoader worker starves the trainer of a core.
    Here the patches are decoded once (``finetune.data.training_pixels``: into one tensor while they fit
    ``finetune.data.DECODED_BUDGET``, else per batch in the DataLoader workers) and each step does a few
    tensor ops on the batch: one ``affine_grid``/``grid_sample`` for crop + flips + quarter turns + rotation, per-sample 3x3 colour
    matrices for saturation and hue, and the batched HED jitter. Same distributions as ``TrainTransform``
    except: the crop resamples bilinearly without antialiasing, rotations reflect at the border instead
    of filling black, hue turns the chroma plane (YIQ) instead of the HSV hue, and the colour operations
    run in a fixed order. Runs on whatever device the batch is on.
    """

    def _uniform(self, n, low, high, g, like):
        import torch

        return torch.rand(n, generator=g).to(like.device) * (high - low) + low

    def geometry(self, x, g):
        """(B, 3, H, W) float -> (B, 3, S, S): random resized crop, flips, quarter turns, rotation."""
        import math

        import torch
        import torch.nn.functional as F

        b, s = len(x), self.preprocess.input_size
        area = self._uniform(b, *self.crop_scale, g, x)
        # log aspect ratio in (3/4, 4/3), narrowed so that the crop fits (torchvision re-draws instead)
        log_area = area.log()
        lo, hi = log_area.clamp(min=math.log(3 / 4)), (-log_area).clamp(max=math.log(4 / 3))
        ratio = torch.exp(lo + torch.rand(b, generator=g).to(x.device) * (hi - lo))
        w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        cx, cy = (self._uniform(b, -1, 1, g, x) * (1 - w)), (self._uniform(b, -1, 1, g, x) * (1 - h))
        angle = torch.zeros(b, device=x.device)
        if self.dihedral:
            angle = angle + torch.randint(0, 4, (b,), generator=g).to(x.device) * (math.pi / 2)
        if self.rotate_degrees:
            angle = angle + self._uniform(b, -1, 1, g, x) * math.radians(self.rotate_degrees)
        fx = torch.ones(b, device=x.device)
        fy = torch.ones(b, device=x.device)
        if self.hflip:
            fx = torch.where(torch.rand(b, generator=g).to(x.device) < 0.5, -1.0, 1.0)
        if self.dihedral:
            fy = torch.where(torch.rand(b, generator=g).to(x.device) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([w * cos * fx, -w * sin * fy, cx], -1),
                             torch.stack([h * sin * fx, h * cos * fy, cy], -1)], 1)
        grid = F.affine_grid(theta, [b, 3, s, s], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x, g):
        """Brightness, contrast, saturation and hue jitter on (B, 3, S, S) in [0, 1]."""
        import math

        import torch

        b = len(x)
        bright, contrast, sat, hue = self.color_jitter
        lum = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        if bright:
            x = (x * self._uniform(b, 1 - bright, 1 + bright, g, x).view(b, 1, 1, 1)).clamp(0, 1)
        if contrast:
            c = self._uniform(b, max(0.0, 1 - contrast), 1 + contrast, g, x).view(b, 1, 1, 1)
            m = (x * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
            x = (c * x + (1 - c) * m).clamp(0, 1)
        if sat:
            s = self._uniform(b, max(0.0, 1 - sat), 1 + sat, g, x).view(b, 1, 1, 1)
            gray = (x * lum).sum(1, keepdim=True)
            x = (s * x + (1 - s) * gray).clamp(0, 1)
        if hue:
            a = self._uniform(b, -hue, hue, g, x) * 2 * math.pi
            yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                               device=x.device)
            rot = torch.zeros(b, 3, 3, device=x.device)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2] = torch.cos(a), -torch.sin(a)
            rot[:, 2, 1], rot[:, 2, 2] = torch.sin(a), torch.cos(a)
            m = torch.linalg.inv(yiq) @ rot @ yiq  # (B, 3, 3) RGB -> RGB
            x = torch.einsum("bij,bjhw->bihw", m, x).clamp(0, 1)
        return x

    def stain(self, x, g):
        """Batched :func:`hed_jitter`: each sample's stains scaled and shifted by its own draws."""
        import torch

        b, c, h, w = x.shape
        od = -torch.log(x.clamp_min(1e-6)).reshape(b, 3, -1).transpose(1, 2)  # (B, HW, 3)
        hed = od @ torch.from_numpy(_HED_FROM_RGB).to(x.device)
        alpha = 1 + self._uniform(b * 3, -self.hed, self.hed, g, x).view(b, 1, 3)
        beta = self._uniform(b * 3, -self.hed, self.hed, g, x).view(b, 1, 3)
        rgb = torch.exp(-((hed * alpha + beta) @ torch.from_numpy(_RGB_FROM_HED).to(x.device)))
        return rgb.transpose(1, 2).reshape(b, c, h, w).clamp(0, 1)

    def __call__(self, pixels, generator=None):
        """(B, 3, H, W) uint8 (from ``training_pixels``) -> (B, 3, S, S) float32, augmented and normalised."""
        import torch

        x = self.geometry(pixels.float() / 255.0, generator).clamp(0, 1)
        if self.color_jitter:
            x = self.colour(x, generator)
        if self.hed:
            x = self.stain(x, generator)
        mean = torch.tensor(self.preprocess.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()


def batch_augment(recipe, mean=None, std=None, *, eval_preprocess=None, **augment) -> BatchAugment:
    """The batched training augmentation at the recipe's input size, normalised by ``mean``/``std``."""
    if augment.get("train_crop", "random") != "random":
        raise FinetuneError("batch augmentation crops first (train_crop='random'); use per-sample augmentation "
                            f"(--sample-augment) for train_crop={augment['train_crop']!r}")
    return BatchAugment(eval_preprocess or preprocess(recipe, mean, std), **augment)
