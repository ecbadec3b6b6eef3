"""Samplers and the DataLoader helper for a :class:`~cxrbench.data.dataset.CacheDataset`.

:class:`ResumableSampler` gives DistributedSampler's order with an exact mid-epoch resume point;
:func:`make_loader` reads one batch per ``dataset[list]`` call (one pass over images.u8).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from cxrbench.common.errors import InputError


class ResumableSampler(Sampler[int]):
    """Epoch-seeded shuffling with DDP sharding and an exact mid-epoch resume point.

    The order is the one ``torch.utils.data.DistributedSampler`` gives for the same ``n``, ``seed``,
    ``epoch``, ``rank`` and ``world_size`` (``torch.randperm`` seeded with ``seed + epoch``; the tail
    padded with the first indices to a multiple of ``world_size``, or trimmed with ``drop_last``;
    rank r takes every ``world_size``-th index from r). ``set_start(k)`` skips the first ``k``
    samples of this rank's order for the current epoch (resume after ``k = steps * batch_size``);
    moving to another epoch with :meth:`set_epoch` resets it to 0.
    """

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if n < 0:
            raise InputError(f"n={n} is negative", where="ResumableSampler", fix="pass len(dataset)")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank={rank}, world_size={world_size} is not a valid shard",
                             where="ResumableSampler", fix="use 0 <= rank < world_size")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self.start = 0
        if self.drop_last and self.n % self.world_size:
            self.num_samples = math.ceil((self.n - self.world_size) / self.world_size)
        else:
            self.num_samples = math.ceil(self.n / self.world_size)
        self.total_size = self.num_samples * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shuffle; a new epoch clears any :meth:`set_start` offset."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def set_start(self, k: int) -> None:
        """Skip the first ``k`` samples of this rank's order in the current epoch."""
        if not 0 <= int(k) <= self.num_samples:
            raise InputError(f"start {k} is outside 0..{self.num_samples}", where="ResumableSampler",
                             fix="pass the number of samples this rank already consumed this epoch")
        self.start = int(k)

    def order(self) -> list[int]:
        """This rank's full order for the current epoch (ignoring the start offset)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(self.n, generator=g).tolist()
        else:
            indices = list(range(self.n))
        if not self.drop_last:
            pad = self.total_size - len(indices)
            if pad > 0 and indices:
                indices += (indices * math.ceil(pad / len(indices)))[:pad]
        else:
            indices = indices[: self.total_size]
        return indices[self.rank : self.total_size : self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start

    def state_dict(self) -> dict[str, int]:
        """Epoch and start offset (plus the configuration, checked on load)."""
        return {"epoch": self.epoch, "start": self.start, "seed": self.seed, "n": self.n,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "n", "world_size"):
            if int(state[key]) != getattr(self, key):
                raise InputError(f"sampler state has {key}={state[key]} but this sampler has "
                                 f"{getattr(self, key)}", where="ResumableSampler",
                                 fix="resume with the same dataset, seed and number of processes")
        self.epoch = int(state["epoch"])
        self.set_start(int(state["start"]))


class ResumableBatchSampler(BatchSampler):
    """A BatchSampler that forwards ``set_epoch``/``set_start``/``state_dict`` to its sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_start(self, k: int) -> None:
        """Skip ``k`` samples (not batches) of the inner sampler's order."""
        self.sampler.set_start(k)

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def default_num_workers() -> int:
    """Loader worker processes: one core kept for the main process, at most 4 (batched reads are cheap)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                sampler: Sampler | None = None, drop_last: bool = False, rank: int = 0,
                world_size: int = 1, num_workers: int | None = None, pin_memory: bool | None = None,
                persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                batched: bool = True, multiprocessing_context: str | None = None) -> DataLoader:
    """A DataLoader yielding ``(uint8 [B, S, S], float32 [B, K])`` batches.

    Args:
        dataset: usually a :class:`CacheDataset`.
        batch_size: images per batch (per process under DDP).
        shuffle, seed, rank, world_size: build a :class:`ResumableSampler` when ``sampler`` is None.
        sampler: any index sampler (e.g. a ``DistributedSampler`` or your own ResumableSampler).
        drop_last: drop the last incomplete batch.
        num_workers: worker processes (default :func:`default_num_workers`; 0 = main process).
        pin_memory: default True when CUDA is available.
        persistent_workers, prefetch_factor: default True and 4 when there are workers.
        batched: with a dataset that supports ``dataset[list]`` (CacheDataset), fetch each batch
            with one call (a :class:`ResumableBatchSampler` becomes ``loader.sampler``); otherwise
            the classic per-item path.

    ``loader.sampler.set_epoch(e)`` and ``.set_start(k_samples)`` work on both paths.
    """
    if int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size!r} is not positive", where="make_loader",
                         fix="use a batch size of at least 1")
    if sampler is None:
        sampler = ResumableSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank,
                                   world_size=world_size)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else bool(pin_memory),
    }
    if workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else bool(persistent_workers)
        kwargs["prefetch_factor"] = 4 if prefetch_factor is None else int(prefetch_factor)
        if multiprocessing_context is not None:
            kwargs["multiprocessing_context"] = multiprocessing_context
    if batched and hasattr(dataset, "batch"):
        batches = ResumableBatchSampler(sampler, int(batch_size), drop_last)
        # batch_size=None: each sampled "index" is a list of indices and dataset[list] is the batch.
        return DataLoader(dataset, batch_size=None, sampler=batches, **kwargs)
    return DataLoader(dataset, batch_size=int(batch_size), sampler=sampler, drop_last=drop_last, **kwargs)

