"""Torch Dataset, resumable sampler and DataLoader helper over a prepared cache (Contract 3).

Everything per item is O(1): labels and cache rows are numpy arrays built once, the image is one
``preadv`` of images.u8 at ``slot * S * S``. The file (and the optional memmap) is opened lazily in
each process and never pickled, so a worker receives only the small arrays, and reading with
``preadv`` instead of a memmap keeps a worker's resident memory flat however much of the cache it
reads. ``dataset[list_of_indices]`` reads a whole batch in one ascending pass (consecutive slots
merged); :func:`make_loader` uses that path (one call per batch instead of one per image).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from cxrbench.cache import (
    IMAGES_FILE,
    INDEX_FILE,
    cache_shape,
    open_memmap,
    read_cache_columns,
    read_cache_index,
    read_manifest,
    recipe_of,
)
from cxrbench.errors import InputError
from cxrbench.schema import SPLITS, read_findings
from cxrbench.validation import check_choice, closest


class CacheDataset(Dataset):
    """Images and labels of a cache, optionally restricted to splits and a subset of findings.

    ``ds[i]`` -> ``(uint8 tensor [S, S], float32 tensor [K])`` with NaN for unknown labels;
    ``ds[[i, j, ...]]`` -> ``(uint8 [B, S, S], float32 [B, K])`` read in one pass.

    Args:
        cache_dir: a complete cache (see :mod:`cxrbench.cache`).
        split: None for all rows, or one split name / a list of them (``train``, ``val``, ``test``).
        findings: None for the cache's findings in cache order, or the names wanted, in the wanted
            order (a name the cache lacks raises InputError).

    Attributes (numpy arrays aligned with dataset positions): ``labels`` float32 [N, K],
    ``image_ids``, ``patient_ids``, ``rows`` (the images.u8 slot of each item), ``splits``;
    plus ``findings`` (list[str]), ``recipe`` (size, resize, equalize), ``size`` and ``cache_dir``.
    """

    def __init__(self, cache_dir: str | os.PathLike, split: str | Sequence[str] | None = None,
                 findings: Sequence[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        manifest = read_manifest(self.cache_dir)
        self._shape = cache_shape(self.cache_dir, manifest)
        self.recipe = recipe_of(manifest)
        self.size = int(self._shape[1])
        self.findings = _select_findings(findings, read_findings(self.cache_dir / INDEX_FILE), self.cache_dir)
        self.split = split
        index = read_cache_columns(self.cache_dir, ["cache_row", "split", *self.findings], self._shape[0])
        keep = _split_mask(index, split, self.cache_dir)
        self._positions = np.flatnonzero(keep)  # positions in the cache index (for metadata())
        sub = index.iloc[self._positions]
        self.rows = sub["cache_row"].to_numpy(dtype=np.int64)
        self.labels = (sub[self.findings].to_numpy(dtype=np.float32, na_value=np.nan) if self.findings
                       else np.zeros((len(sub), 0), dtype=np.float32))
        del index, sub
        self._ids: dict[str, np.ndarray] | None = None
        self._load_ids()
        self._images: np.memmap | None = None
        self._fd: int | None = None
        self._fd_pid: int | None = None

    # -- identifiers: kept in the main process, dropped from the pickle, re-read on demand ---------
    @property
    def image_ids(self) -> np.ndarray:
        """Image ids (object array of str) in dataset order."""
        return self._load_ids()["image_id"]

    @property
    def patient_ids(self) -> np.ndarray:
        """Patient ids (object array of str) in dataset order."""
        return self._load_ids()["patient_id"]

    @property
    def splits(self) -> np.ndarray:
        """Split name of each item (object array of str)."""
        return self._load_ids()["split"]

    def _load_ids(self) -> dict[str, np.ndarray]:
        if self._ids is None:
            cols = ["image_id", "patient_id", "split"]
            df = read_cache_columns(self.cache_dir, cols, self._shape[0]).iloc[self._positions]
            self._ids = {c: df[c].astype(str).to_numpy(dtype=object) for c in cols}
        return self._ids

    # -- image storage, opened lazily per process ------------------------------------------------
    @property
    def images(self) -> np.memmap:
        """The read-only uint8 memmap ``[N_slots, S, S]`` (opened on first use in each process)."""
        if self._images is None:
            self._images = open_memmap(self.cache_dir, self._shape)
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # never pickle the memmap or the file; each process opens its own
        state["_fd"] = state["_fd_pid"] = None
        state["_ids"] = None  # workers only need rows and labels; ids are re-read if ever asked for
        return state

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def read_slots(self, slots: np.ndarray) -> np.ndarray:
        """uint8 ``[len(slots), S, S]``: the images in images.u8 ``slots``, in the given order.

        Read with ``preadv`` straight into the result, in ascending slot order with consecutive
        slots merged into one read, so a worker's resident memory does not grow with the pages of
        the cache it has touched (a memmap keeps them mapped). Falls back to the memmap where
        ``preadv`` is missing (Windows).
        """
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        out = np.empty((len(slots), self.size, self.size), dtype=np.uint8)
        if not len(slots):
            return out
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        if not hasattr(os, "preadv"):
            out[order] = self.images[ordered]
            return out
        fd = self._file()
        item = self.size * self.size
        flat = out.reshape(len(slots), item)
        # runs: consecutive slots that also land in consecutive output positions
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(order) != 1)) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(slots)], strict=True):
            dest = memoryview(flat[order[start] : order[start] + (stop - start)]).cast("B")
            got = os.preadv(fd, [dest], int(ordered[start]) * item)
            if got != len(dest):
                raise InputError(f"images.u8 ended early at slot {int(ordered[start])}",
                                 where=str(self.cache_dir),
                                 fix="the cache is damaged; rebuild it with `cxrbench prepare --overwrite`")
        return out

    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.cache_dir / IMAGES_FILE, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    # -- access ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):  # int -> one item; sequence/array/slice -> one batch
        if not isinstance(idx, slice) and np.ndim(idx) == 0:  # int, numpy or 0-d tensor index
            i = int(idx)
            if not -len(self) <= i < len(self):
                raise IndexError(f"index {i} is out of range for a dataset of {len(self)} images")
            image = torch.from_numpy(self.read_slots(self.rows[[i]])[0])
            return image, torch.from_numpy(self.labels[i].copy())
        return self.batch(idx)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``uint8 [B, S, S]`` and labels ``float32 [B, K]`` for dataset positions ``indices``.

        One pass over the file in ascending slot order (see :meth:`read_slots`).
        """
        if isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return torch.from_numpy(self.read_slots(self.rows[idx])), torch.from_numpy(self.labels[idx])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # torch's fetcher calls this for a batch when present; one memmap read serves the batch and
        # the per-item list keeps any collate_fn (the default one included) working.
        images, labels = self.batch(indices)
        return list(zip(images.unbind(0), labels.unbind(0), strict=True))

    def metadata(self) -> pd.DataFrame:
        """The cache index rows of this dataset, in dataset order (read from disk on each call)."""
        index, _ = read_cache_index(self.cache_dir, self._shape[0])
        return index.iloc[self._positions].reset_index(drop=True)

    def pos_weight(self) -> np.ndarray:
        """Per finding negatives/positives over known labels (BCE ``pos_weight``); NaN if no positive."""
        known = ~np.isnan(self.labels)
        pos = np.nansum(self.labels, axis=0)
        neg = known.sum(axis=0) - pos
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(pos > 0, neg / pos, np.nan).astype(np.float32)

    def __repr__(self) -> str:
        return (f"CacheDataset({str(self.cache_dir)!r}, split={self.split!r}, n={len(self)}, "
                f"findings={len(self.findings)}, size={self.size})")


def _select_findings(wanted: Sequence[str] | None, available: list[str], where: Path) -> list[str]:
    if wanted is None:
        return list(available)
    if isinstance(wanted, str):
        wanted = [wanted]
    wanted = list(wanted)
    for name in wanted:
        if name not in available:
            hint = closest(name, available)
            fix = f"did you mean {hint!r}? " if hint else ""
            raise InputError(f"finding {name!r} is not in the cache", where=str(where),
                             fix=f"{fix}the cache has: {', '.join(available)}")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"findings {wanted!r} name a finding twice", where=str(where),
                         fix="list each finding once")
    return wanted


def _split_mask(index: pd.DataFrame, split: str | Sequence[str] | None, where: Path) -> np.ndarray:
    if split is None:
        return np.ones(len(index), dtype=bool)
    names = [split] if isinstance(split, str) else list(split)
    values = index["split"].astype(str).to_numpy(dtype=object)
    keep = np.zeros(len(index), dtype=bool)
    present = sorted(set(values))
    for name in names:
        check_choice("split", name, SPLITS, where=str(where))
        hit = values == name
        if not hit.any():
            raise InputError(f"split {name!r} has no images in this cache", where=str(where),
                             fix=f"splits present: {', '.join(present) or 'none'}")
        keep |= hit
    return keep


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
