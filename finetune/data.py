"""Patches from the store (PNG bytes) as torch datasets and loaders for fine-tuning."""

from __future__ import annotations

import numpy as np

from mitoprobe.embedder.transforms import decode_png
from mitoprobe.store.errors import FinetuneError


class PatchDataset:
    """``(x, y)`` pairs: ``x`` = ``transform(rgb)`` as a float tensor, ``y`` = 1.0 for atypical (a row of
    targets when ``y`` is 2-D: the main target, then the auxiliary subtype distribution)."""

    def __init__(self, pngs: list[bytes], y: np.ndarray | None, transform):
        self.pngs, self.y, self.transform = pngs, y, transform

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int):
        import torch

        x = self.transform(decode_png(self.pngs[i]))
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
        return x, torch.as_tensor(self.y[i] if self.y is not None else -1.0, dtype=torch.float32)


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def sample_weights(y: np.ndarray) -> np.ndarray:
    """1 / class count per sample (the paper's WeightedRandomSampler weights)."""
    counts = np.bincount(y.astype(np.int64), minlength=2).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return w[y.astype(np.int64)]


def train_loader(pngs, y, transform, batch_size: int, sampler: str, seed: int, num_workers: int,
                 pin_memory: bool, num_samples: int | None = None, targets: np.ndarray | None = None):
    """One epoch's loader; ``seed`` fixes the sampler's draws and every worker's augmentation.

    ``y``: the 0/1 labels the sampler balances; ``targets``: what the loss sees instead (soft), if given."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

    g = torch.Generator().manual_seed(seed)
    n = num_samples or len(pngs)
    if sampler == "weighted":
        smp = WeightedRandomSampler(torch.as_tensor(sample_weights(y)), n, replacement=True, generator=g)
    else:
        smp = RandomSampler(range(len(pngs)), num_samples=n if n != len(pngs) else None, generator=g)
    labels = y if targets is None else targets
    return DataLoader(PatchDataset(pngs, labels, transform), batch_size=batch_size, sampler=smp,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      generator=g, pin_memory=pin_memory, drop_last=False)


def stack_pixels(pngs: list[bytes], geometry=None):
    """Decode every patch once: (N, 3, H, W) uint8, after ``geometry`` (the recipe's view) when given.

    For :class:`finetune.augment.BatchAugment`, which needs the patches as one tensor."""
    import torch

    arrays = [decode_png(b) for b in pngs]
    if geometry is not None:
        arrays = [geometry(a) for a in arrays]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise FinetuneError(f"batch augmentation needs patches of one size, got {sorted(sizes)[:3]}; crop from the "
                            "recipe's view (crop_from='view') or augment per sample (batch_augment=False)")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_batches(pixels, y: np.ndarray, augment, batch_size: int, sampler: str, seed: int,
                   targets: np.ndarray | None = None):
    """One epoch of ``(augment(pixels[idx]), y[idx])`` batches in the main process (no workers).

    ``seed`` fixes the order (a shuffle, or the paper's class-balanced draws with replacement) and
    every augmentation draw, so a resumed epoch is the same epoch. ``targets`` replace ``y`` in the
    batches (soft targets) while the sampler still balances the 0/1 labels ``y``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = len(y)
    if sampler == "weighted":
        order = torch.multinomial(torch.as_tensor(sample_weights(y)), n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    labels = torch.as_tensor(np.asarray(y if targets is None else targets, dtype=np.float32))
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield augment(pixels[idx.to(pixels.device)], g), labels[idx]


def eval_loader(pngs, transform, batch_size: int, num_workers: int, pin_memory: bool):
    from torch.utils.data import DataLoader

    return DataLoader(PatchDataset(pngs, None, transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      pin_memory=pin_memory)
