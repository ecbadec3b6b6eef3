"""A torch Dataset over a prepared cache (Contract 3), opened through :func:`cxrbench.cache.read.open_cache`.

Everything per item is O(1): labels and cache rows are numpy arrays built once, the image is one
``preadv`` of images.u8 at ``slot * S * S``. The file (and the optional memmap) is opened lazily in
each process and never pickled, so a worker receives only the small arrays, and reading with
``preadv`` instead of a memmap keeps a worker's resident memory flat however much of the cache it
reads. ``dataset[list_of_indices]`` reads a whole batch in one ascending pass (consecutive slots
merged); :func:`cxrbench.data.loader.make_loader` uses that path (one call per batch).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrbench.cache.read import Cache, open_cache
from cxrbench.common.errors import InputError
from cxrbench.common.layout import CACHE_IMAGES, CACHE_INDEX
from cxrbench.common.validation import check_choice, closest
from cxrbench.index.schema import SPLITS

_ALLOWED_SPLITS: contextvars.ContextVar[tuple[frozenset[str], str] | None] = contextvars.ContextVar(
    "cxrbench_allowed_splits", default=None)


class SplitGuardError(RuntimeError):
    """Code running under :func:`only_splits` tried to read a split it must never see."""


@contextlib.contextmanager
def only_splits(splits: Sequence[str], why: str) -> Iterator[None]:
    """While active (in this thread or task), opening a cache split outside ``splits`` raises
    :class:`SplitGuardError` naming ``why`` (e.g. a tuning run, which must never read the test split):
    :class:`CacheDataset` (all rows, or any split not allowed) and the frozen-embedding store check it."""
    token = _ALLOWED_SPLITS.set((frozenset(splits), why))
    try:
        yield
    finally:
        _ALLOWED_SPLITS.reset(token)


def check_split_read(split: str | Sequence[str] | None, where: str) -> None:
    """Raise :class:`SplitGuardError` when an active :func:`only_splits` guard forbids reading ``split``
    (None: every row of the cache)."""
    guard = _ALLOWED_SPLITS.get()
    if guard is None:
        return
    allowed, why = guard
    names = ["every split"] if split is None else [split] if isinstance(split, str) else list(split)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise SplitGuardError(f"{why} may read only the {', '.join(sorted(allowed))} split(s); it tried to "
                              f"read {', '.join(bad)} of {where}")


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
        check_split_read(split, str(self.cache_dir))
        cache = open_cache(self.cache_dir)
        self._shape = cache.shape
        self.recipe = cache.recipe
        self.size = cache.size
        self.findings = _select_findings(findings, cache.findings, self.cache_dir)
        self.split = split
        index = cache.columns(["cache_row", "split", *self.findings])
        keep = _split_mask(index, split, self.cache_dir)
        self._positions = np.flatnonzero(keep)  # positions in the cache index (for metadata())
        sub = index.iloc[self._positions]
        self.rows = sub["cache_row"].to_numpy(dtype=np.int64)
        self.labels = (sub[self.findings].to_numpy(dtype=np.float32, na_value=np.nan) if self.findings
                       else np.zeros((len(sub), 0), dtype=np.float32))
        _check_labels(self.labels, self.findings, sub, self.cache_dir)
        self.label_changes: dict[str, Any] | None = None  # a label budget / noise applied (data.budget)
        del index, sub
        self._opened: Cache | None = cache
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
            df = self._cache().columns(cols).iloc[self._positions]
            self._ids = {c: df[c].astype(str).to_numpy(dtype=object) for c in cols}
        return self._ids

    # -- image storage, opened lazily per process ------------------------------------------------
    @property
    def images(self) -> np.memmap:
        """The read-only uint8 memmap ``[N_slots, S, S]`` (opened on first use in each process)."""
        if self._images is None:
            self._images = self._cache().images
        return self._images

    def _cache(self) -> Cache:
        """The opened cache (re-opened through the one door after unpickling in a worker)."""
        if getattr(self, "_opened", None) is None:
            self._opened = open_cache(self.cache_dir)
        return self._opened

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images"] = None  # never pickle the memmap or the file; each process opens its own
        state["_fd"] = state["_fd_pid"] = None
        state["_ids"] = None  # workers only need rows and labels; ids are re-read if ever asked for
        state["_opened"] = None
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
            self._fd = os.open(self._cache().path / CACHE_IMAGES, os.O_RDONLY)
            self._fd_pid = os.getpid()
        return self._fd

    def restrict(self, keep: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Keep only the items where ``keep`` (bool, dataset order) is True; ``labels`` (float32
        [kept, K]) replaces their labels when given (a label budget, label noise)."""
        keep = np.asarray(keep, dtype=bool)
        ids = self._load_ids()
        self._positions = self._positions[keep]
        self.rows = self.rows[keep]
        self.labels = (np.asarray(labels, dtype=np.float32) if labels is not None
                       else self.labels[keep])
        self._ids = {k: v[keep] for k, v in ids.items()}

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
        return open_cache(self.cache_dir).index.iloc[self._positions].reset_index(drop=True)

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


def _check_labels(labels: np.ndarray, findings: list[str], rows: pd.DataFrame, where: Path) -> None:
    """Contract 2: a label is 1, 0 or NaN (unknown); anything else is named, not trained on."""
    bad = ~(np.isnan(labels) | (labels == 0) | (labels == 1))
    if bad.any():
        i, k = (int(v[0]) for v in np.nonzero(bad))
        raise InputError(f"finding {findings[k]!r} has label {float(labels[i, k])!r} at cache row "
                         f"{int(rows['cache_row'].iloc[i])} ({int(bad.sum())} bad label(s) in all): labels "
                         "must be 1, 0 or empty", where=str(where / CACHE_INDEX),
                         fix="the cache's index was changed by hand; rebuild it with `cxrbench prepare`")


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



class ArrayDataset(Dataset):
    """Images already in memory (uint8 ``[N, S, S]``, e.g. files decoded for ``cxrbench predict``) with
    the batch interface of :class:`CacheDataset` (no labels: ``[B, 0]``), so a run scores them on the
    same path as a cache split."""

    def __init__(self, images: np.ndarray) -> None:
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N, S, S] images, got {images.dtype} {images.shape}")
        self.images = images
        self.findings: list[str] = []
        self.cache_dir = None
        self.size = int(images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, idx):  # sequence -> one batch (as CacheDataset)
        return self.batch(idx)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``uint8 [B, S, S]`` and empty labels ``float32 [B, 0]`` for positions ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return torch.from_numpy(np.ascontiguousarray(self.images[idx])), torch.zeros((len(idx), 0))
