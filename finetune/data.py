"""Patches from the store (PNG bytes) as torch datasets and loaders for fine-tuning.

Memory: no loader holds a fold's PNGs. :class:`StoredPngs` reads a patch's row group from the store's parts
when a sample is asked for (in the DataLoader worker that asks), keeping only the rows it needs in a small
per-process cache, so a fold of any size costs each worker at most ``TRAIN_CACHE_BYTES`` of PNG bytes plus its
batches. The training epoch is read chunk by chunk (:meth:`StoredPngs.chunks`): when the fold's training PNGs
exceed ``CHUNK_BYTES``, the epoch's draws are regrouped into chunks of row groups (a seeded shuffle of the
row groups each epoch), so every worker reads each row group about once an epoch; at or below it (the
benchmark's folds: <= 83 MB) the epoch's order is the draws' own, the same batches as when every PNG was held.
Evaluation reads the patches in storage order (each row group once) and puts the results back in order.
Decoded tensors are kept only under ``DECODED_BUDGET`` (batch augmentation's pixels, the held-out part).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from mitoprobe.embedder.transforms import decode_png
from mitoprobe.store.errors import FinetuneError
from mitoprobe.store.patch_parts import PatchParts, read_row_group

# Stored PNG bytes of training rows one chunk of a streamed epoch spans: above the largest benchmark fold's
# training PNGs (2,894 AMi-Br patches, 83 MB), so a benchmark epoch is one chunk and keeps the draws' order.
CHUNK_BYTES = 96 << 20
# A training source's per-process cache: a chunk, plus the next chunk's first row groups at its boundary.
TRAIN_CACHE_BYTES = 2 * CHUNK_BYTES
# Decoded bytes kept in memory at most, each: batch augmentation's uint8 training pixels (``training_pixels``;
# the benchmark's 2,315 training patches at 107 px: ~80 MB) and the held-out part's float inputs
# (``train.decode_for_eval``; the benchmark's ~580 at 64 px: ~28 MB). Above it they are decoded per batch from
# the stored PNGs instead, every epoch: slower on a CPU without workers, but a fold's memory stops growing
# with the cohort (a 10^5-patch cohort's 80,000 training patches would take 2.7 GB decoded).
DECODED_BUDGET = 256 << 20


class StoredPatches:
    """Where a fold's patches are stored: each id's (part, row group, row), found once from the parts'
    ``patch_id`` columns (``PatchParts.locate``; no PNG is read). :meth:`pngs` gives the bytes of any of them
    as a sequence that reads them from the parts when asked."""

    def __init__(self, parts: PatchParts, patch_ids):
        import pandas as pd

        self.ids = pd.Index(list(dict.fromkeys(map(str, patch_ids))))
        self.loc = parts.locate(self.ids)
        missing = self.ids[self.loc.part < 0]
        if len(missing):
            raise FinetuneError(f"{len(missing)} patch(es) of the fold are not in the store's patches table (e.g. "
                                f"{', '.join(missing[:3])}): was data re-imported since the folds were made? "
                                "Run `mitoprobe store check`")

    def pngs(self, patch_ids, cache_bytes: int = 0) -> "StoredPngs":
        at = self.ids.get_indexer(list(map(str, patch_ids)))
        if (at < 0).any():
            raise FinetuneError(f"patch {patch_ids[int(np.flatnonzero(at < 0)[0])]!r} is not one of this fold's")
        return StoredPngs(self.loc, at, np.asarray(self.ids)[at], cache_bytes)


class StoredPngs:
    """The PNG bytes of some patches (``pngs[i]``, in the order asked), read from the parts when asked.

    ``pngs[i]`` reads the row group holding patch ``i`` (only the rows this sequence needs from it are kept)
    into a per-process LRU cache of at most ``cache_bytes`` (the last row group read is always kept); a
    DataLoader worker fills its own (the cache is not pickled). Any order reads the same bytes; reads are
    cheap in :meth:`storage_order` or in an epoch regrouped by :meth:`chunks`."""

    def __init__(self, loc, at: np.ndarray, ids: np.ndarray, cache_bytes: int = 0):
        self.paths = [str(p) for p in loc.parts]
        self.cache_bytes = cache_bytes
        key = loc.part[at].astype(np.int64) << 32 | loc.group[at]
        groups, self.group_of = np.unique(key, return_inverse=True)  # row-group index of each position
        self.group_part, self.group_num = (groups >> 32).astype(np.int64), (groups & 0xFFFFFFFF).astype(np.int64)
        rows = loc.row[at].astype(np.int64)
        slots, inverse = np.unique(self.group_of.astype(np.int64) << 32 | rows, return_inverse=True)
        slot_group = slots >> 32
        self.first = np.searchsorted(slot_group, np.arange(len(groups) + 1))  # a group's slots: first[j]:first[j+1]
        self.slot = inverse - self.first[self.group_of]  # a position's row among its group's needed rows
        self.slot_row = slots & 0xFFFFFFFF
        self.slot_id = np.empty(len(slots), dtype=object)
        self.slot_id[inverse] = ids
        self.group_bytes = np.bincount(slot_group, weights=loc.png_bytes[at][np.unique(inverse, return_index=True)[1]],
                                       minlength=len(groups))
        self._cache: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.group_of)

    def __getstate__(self):
        return dict(self.__dict__, _cache=OrderedDict())

    def __getitem__(self, i: int) -> bytes:
        j = int(self.group_of[i])
        png = self._cache.get(j)
        if png is None:
            png = self._read(j)
            self._cache[j] = png
            while len(self._cache) > 1 and sum(a.nbytes for a in self._cache.values()) > self.cache_bytes:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(j)
        return png[int(self.slot[i])].as_py()

    def in_storage_order(self):
        """``(position, PNG bytes)`` of every position, each row group read once; nothing is cached."""
        order = self.storage_order()
        ends = np.cumsum(np.bincount(self.group_of, minlength=len(self.first) - 1))
        for j, (start, end) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
            png = self._read(j)
            for i in order[start:end]:
                yield int(i), png[int(self.slot[i])].as_py()

    def _read(self, j: int):
        """Row group ``j``'s needed PNGs, checked against the ids they were located as."""
        import pyarrow as pa

        path, g = self.paths[self.group_part[j]], int(self.group_num[j])
        t = read_row_group(path, g, ("patch_id", "png")).take(pa.array(self.slot_row[self.first[j]:self.first[j + 1]]))
        if t["patch_id"].to_pylist() != list(self.slot_id[self.first[j]:self.first[j + 1]]):
            raise FinetuneError(f"{path}: row group {g} no longer holds the patches it held when the fold started "
                                "(the patches table changed under the run); run the command again: the fold resumes")
        return t["png"].combine_chunks()

    def storage_order(self) -> np.ndarray:
        """Positions by part, row group and row: every row group read once, in turn."""
        return np.lexsort((self.slot, self.group_of))

    def chunks(self, seed: int) -> np.ndarray | None:
        """Each position's chunk in the epoch of ``seed``: the row groups in a seeded order, packed into chunks
        of at most ``CHUNK_BYTES`` of needed PNGs (estimated from the parts' footers; a group is never split).
        None when everything fits one chunk: the epoch keeps the draws' own order."""
        if self.group_bytes.sum() <= CHUNK_BYTES:
            return None
        chunk_of_group = np.empty(len(self.group_bytes), np.int64)
        chunk, used = 0, 0.0
        for j in np.random.default_rng([seed, 0xC4]).permutation(len(self.group_bytes)):
            if used and used + self.group_bytes[j] > CHUNK_BYTES:
                chunk, used = chunk + 1, 0.0
            chunk_of_group[j], used = chunk, used + self.group_bytes[j]
        return chunk_of_group[self.group_of]


def storage_order(pngs) -> np.ndarray:
    """The order to read ``pngs`` in: storage order for :class:`StoredPngs`, else as given."""
    return pngs.storage_order() if isinstance(pngs, StoredPngs) else np.arange(len(pngs))


def iter_pngs(pngs):
    """``(position, PNG bytes)`` of every patch of ``pngs`` in :func:`storage_order`, caching nothing."""
    return pngs.in_storage_order() if isinstance(pngs, StoredPngs) else enumerate(pngs)


def by_chunk(positions, pngs, seed: int) -> np.ndarray | None:
    """The permutation that regroups an epoch's drawn ``positions`` by ``pngs.chunks(seed)`` (each chunk's draws
    together, in their drawn order), or None: no chunking (PNGs in memory, or one chunk)."""
    chunk = pngs.chunks(seed) if isinstance(pngs, StoredPngs) else None
    return None if chunk is None else np.argsort(chunk[np.asarray(positions)], kind="stable")


class PatchDataset:
    """``(x, y)`` pairs: ``x`` = ``transform(rgb)`` as a float tensor, ``y`` = 1.0 for atypical (a row of
    targets when ``y`` is 2-D: the main target, then the auxiliary subtype distribution).

    ``pngs``: a list of PNG bytes or :class:`StoredPngs`. Indexed by a position, or by ``(position, seed)`` from
    :class:`EpochSampler`: then torch's CPU generator is seeded from ``seed`` for the transform (torchvision's
    random ops draw from it), so a sample's augmentation depends on nothing but its seed, whichever process runs
    it; the caller's generator state is restored."""

    def __init__(self, pngs, y: np.ndarray | None, transform):
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
    seed alone, and a resumed fold draws exactly what an uninterrupted one would.

    ``pngs`` (the dataset's :class:`StoredPngs`, if it streams): the drawn pairs are regrouped by its chunks of
    row groups (:func:`by_chunk`), so the workers read each row group about once an epoch."""

    def __init__(self, y: np.ndarray, sampler: str, num_samples: int, seed: int = 0, pngs=None):
        self.y, self.sampler, self.num_samples, self.seed, self.pngs = y, sampler, num_samples, seed, pngs

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
        perm = by_chunk(positions, self.pngs, self.seed)
        if perm is not None:
            positions, seeds = [positions[i] for i in perm], [seeds[i] for i in perm]
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

    ``pngs``: a list of PNG bytes or :class:`StoredPngs` (each worker then reads the row groups it needs).
    ``y``: the 0/1 labels the sampler balances; ``targets``: what the loss sees instead (soft), if given."""
    import torch
    from torch.utils.data import DataLoader

    labels = y if targets is None else targets
    smp = EpochSampler(np.asarray(y), sampler, num_samples or len(pngs), seed, pngs)
    # its own generator: the worker base seed is drawn from it, never from torch's global generator
    return DataLoader(PatchDataset(pngs, labels, transform), batch_size=batch_size, sampler=smp,
                      num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory, drop_last=False)


def _pixels(png: bytes, geometry=None) -> np.ndarray:
    rgb = decode_png(png)
    return rgb if geometry is None else geometry(rgb)


def _one_size(shapes) -> None:
    if len(shapes) > 1:
        raise FinetuneError(f"batch augmentation needs patches of one size, got {sorted(shapes)[:3]}; crop from the "
                            "recipe's view (crop_from='view') or augment per sample (batch_augment=False)")


def stack_pixels(pngs, geometry=None):
    """Decode every patch once: (N, 3, H, W) uint8, after ``geometry`` (the recipe's view) when given.

    For :class:`finetune.augment.BatchAugment`, which needs the patches as one tensor; ``pngs`` (a list or
    :class:`StoredPngs`) are read in storage order into a tensor allocated once."""
    import torch

    out = None
    for i, png in iter_pngs(pngs):
        a = _pixels(png, geometry)
        if out is None:
            out = np.empty((len(pngs), *a.shape), np.uint8)
        _one_size({out.shape[1:], a.shape})
        out[i] = a
    if out is None:
        raise FinetuneError("batch augmentation needs at least one training patch")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class PixelDataset:
    """One patch as (3, H, W) uint8 after ``geometry``: batch augmentation's input, decoded per batch in the
    DataLoader workers when the fold's decoded pixels exceed ``DECODED_BUDGET`` (:func:`training_pixels`)."""

    def __init__(self, pngs, geometry, shape: tuple):
        self.pngs, self.geometry, self.shape = pngs, geometry, shape

    def __len__(self) -> int:
        return len(self.pngs)

    def __getitem__(self, i):
        import torch

        a = _pixels(self.pngs[i], self.geometry)
        _one_size({self.shape, a.shape})
        return torch.tensor(a).permute(2, 0, 1)  # a copy: decoded arrays are read-only


def in_budget(n: int, item_nbytes: int) -> bool:
    """Whether ``n`` decoded items of ``item_nbytes`` each may be kept in memory (``DECODED_BUDGET``)."""
    return n * item_nbytes <= DECODED_BUDGET


def training_pixels(pngs, geometry=None):
    """Batch augmentation's training patches: decoded once (``stack_pixels``) when they fit ``DECODED_BUDGET``
    (the first patch's decoded size x N), else a :class:`PixelDataset` that :func:`tensor_batches` decodes
    per batch (memory: the batches, whatever the fold's size)."""
    first = _pixels(pngs[0], geometry) if len(pngs) else None
    if first is None or in_budget(len(pngs), first.nbytes):
        return stack_pixels(pngs, geometry)
    return PixelDataset(pngs, geometry, first.shape)


def tensor_batches(pixels, y: np.ndarray, augment, batch_size: int, sampler: str, seed: int,
                   targets: np.ndarray | None = None, device: str = "cpu", num_workers: int = 0,
                   pin_memory: bool = False):
    """One epoch of ``(augment(pixels[idx]), y[idx])`` batches, augmented in the main process.

    ``seed`` fixes the order (a shuffle, or the paper's class-balanced draws with replacement) and
    every augmentation draw, so a resumed epoch is the same epoch. ``targets`` replace ``y`` in the
    batches (soft targets) while the sampler still balances the 0/1 labels ``y``.

    ``pixels``: the decoded tensor (``stack_pixels``, on the augmentation's device), or a :class:`PixelDataset`
    (above ``DECODED_BUDGET``): its batches are decoded in ``num_workers`` DataLoader workers (this epoch's)
    and moved to ``device``, the epoch regrouped by its row-group chunks (:func:`by_chunk`)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    n = len(y)
    if sampler == "weighted":
        order = torch.multinomial(torch.as_tensor(sample_weights(y)), n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    labels = torch.as_tensor(np.asarray(y if targets is None else targets, dtype=np.float32))
    if isinstance(pixels, torch.Tensor):
        batches = order.split(batch_size)
        xs = (pixels[idx.to(pixels.device)] for idx in batches)
    else:
        perm = by_chunk(order.numpy(), pixels.pngs, seed)
        batches = (order if perm is None else order[torch.from_numpy(perm)]).split(batch_size)
        loader = DataLoader(pixels, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers,
                            worker_init_fn=_worker_init if num_workers else None, pin_memory=pin_memory)
        xs = (x.to(device, non_blocking=True) for x in loader)
    for idx, x in zip(batches, xs):
        yield augment(x, g), labels[idx]


def eval_loader(pngs, transform, batch_size: int, num_workers: int, pin_memory: bool):
    """Batches of ``transform``ed patches in :func:`storage_order` (each row group read once): put the results
    back in ``pngs``' order with that order."""
    from torch.utils.data import DataLoader

    return DataLoader(PatchDataset(pngs, None, transform), batch_size=batch_size,
                      sampler=storage_order(pngs).tolist(), num_workers=num_workers,
                      worker_init_fn=_worker_init if num_workers else None, pin_memory=pin_memory)
