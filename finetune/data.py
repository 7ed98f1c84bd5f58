"""Patches from the store (PNG bytes) as torch datasets and loaders for fine-tuning."""

from __future__ import annotations

import numpy as np

from embedder.transforms import decode_png


class PatchDataset:
    """``(x, y)`` pairs: ``x`` = ``transform(rgb)`` as a float tensor, ``y`` = 1.0 for atypical."""

    def __init__(self, pngs: list[bytes], y: np.ndarray | None, transform):
        self.pngs, self.y, self.transform = pngs, y, transform

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i: int):
        import torch

        x = self.transform(decode_png(self.pngs[i]))
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
        return x, torch.tensor(float(self.y[i]) if self.y is not None else -1.0)


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def sample_weights(y: np.ndarray) -> np.ndarray:
    """1 / class count per sample (the paper's WeightedRandomSampler weights)."""
    counts = np.bincount(y.astype(np.int64), minlength=2).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return w[y.astype(np.int64)]


def train_loader(pngs, y, transform, batch_size: int, sampler: str, seed: int, num_workers: int,
                 pin_memory: bool, num_samples: int | None = None):
    """One epoch's loader; ``seed`` fixes the sampler's draws and every worker's augmentation."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

    g = torch.Generator().manual_seed(seed)
    n = num_samples or len(pngs)
    if sampler == "weighted":
        smp = WeightedRandomSampler(torch.as_tensor(sample_weights(y)), n, replacement=True, generator=g)
    else:
        smp = RandomSampler(range(len(pngs)), num_samples=n if n != len(pngs) else None, generator=g)
    return DataLoader(PatchDataset(pngs, y, transform), batch_size=batch_size, sampler=smp,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      generator=g, pin_memory=pin_memory, drop_last=False)


def eval_loader(pngs, transform, batch_size: int, num_workers: int, pin_memory: bool):
    from torch.utils.data import DataLoader

    return DataLoader(PatchDataset(pngs, None, transform), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      pin_memory=pin_memory)
