"""Patches from the store (PNG bytes) as torch datasets and loaders for fine-tuning."""

from __future__ import annotations

import numpy as np

from mitoprobe.embedder.transforms import decode_png
from mitoprobe.store.errors import FinetuneError


class PatchDataset:
    """``(x, y)`` pairs: ``x`` = ``transform(rgb)`` as a float tensor, ``y`` = 1.0 for atypical (a row of
    targets when ``y`` is 2-D: the main target, then the auxiliary subtype distribution).

    Indexed by a position, or by ``(position, seed)`` from :class:`EpochSampler`: then torch's CPU generator is
    seeded from ``seed`` for the transform (torchvision's random ops draw from it), so a sample's augmentation
    depends on nothing but its seed, whichever process runs it; the caller's generator state is restored."""

    def __init__(self, pngs: list[bytes], y: np.ndarray | None, transform):
        self.pngs, self.y, self.transform = pngs, y, transform

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, item):
        import torch

        i, seed = item if isinstance(item, tuple) else (item, None)
        rgb = decode_png(self.pngs[i])
        if seed is None:
            x = self.transform(rgb)
        else:
            with torch.random.fork_rng(devices=[]):  # CPU only: a CUDA seed here would move dropout's draws
                torch.default_generator.manual_seed(seed)
                x = self.transform(rgb)
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(x)
        return x, torch.as_tensor(self.y[i] if self.y is not None else -1.0, dtype=torch.float32)


class EpochSampler:
    """An epoch's ``(position, augmentation seed)`` pairs, drawn in the main process from the seed that
    :meth:`reseed` sets before each epoch: the paper's class-balanced draws with replacement
    (``WeightedRandomSampler``) or a shuffle (``RandomSampler``), then one seed per drawn sample.

    Why: DataLoader workers live across epochs (``persistent_workers``), so nothing may depend on when a
    worker started or how many there are; the epoch's samples and augmentations are a function of the epoch
    seed alone, and a resumed fold draws exactly what an uninterrupted one would."""

    def __init__(self, y: np.ndarray, sampler: str, num_samples: int, seed: int = 0):
        self.y, self.sampler, self.num_samples, self.seed = y, sampler, num_samples, seed

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        import torch
        from torch.utils.data import RandomSampler, WeightedRandomSampler

        g = torch.Generator().manual_seed(self.seed)
        n, size = self.num_samples, len(self.y)
        if self.sampler == "weighted":
            order = WeightedRandomSampler(torch.as_tensor(sample_weights(self.y)), n, replacement=True, generator=g)
        else:
            order = RandomSampler(range(size), num_samples=n if n != size else None, generator=g)
        positions = list(order)
        seeds = torch.randint(2**62, (len(positions),), generator=g).tolist()
        return iter(zip(positions, seeds))


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
    """The training loader of a whole fold: build it once, ``loader.sampler.reseed(epoch_seed)`` before each
    epoch (``seed``: the first epoch's). Its workers persist across epochs; its batches depend on the epoch
    seed only, not on the worker count (:class:`EpochSampler`).

    ``y``: the 0/1 labels the sampler balances; ``targets``: what the loss sees instead (soft), if given."""
    import torch
    from torch.utils.data import DataLoader

    labels = y if targets is None else targets
    smp = EpochSampler(np.asarray(y), sampler, num_samples or len(pngs), seed)
    # its own generator: the worker base seed is drawn from it, never from torch's global generator
    return DataLoader(PatchDataset(pngs, labels, transform), batch_size=batch_size, sampler=smp,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory, drop_last=False)


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
