"""Embeddings of a frozen backbone, computed once per (weights, model, image size, precision, cache)
and kept beside the cache.

Layout (names in :mod:`cxrbench.common.layout`): ``CACHE/embeddings/<key>/<split>.safetensors``
(tensor ``embeddings``, float32 ``[N, D]``, rows in the split's cache order) and
``CACHE/embeddings/<key>/embeddings.json`` (what the key stands for, the splits stored). ``<key>``
hashes :class:`EmbeddingSpec` (the SHA-256 of the weights file, or the seed of a random init; the
architecture and its build options; input size; normalization; autocast precision) together with
the SHA-256 of the cache's ``manifest.json``: a changed cache or changed weights give a new key, so
stale embeddings are never read. The cache's own files are never touched; every write is atomic and
made under a lock, so two processes needing the same embeddings compute them once. A cache folder
that cannot be written gets its embeddings computed in memory only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path, atomic_write_json, file_sha256, read_json
from cxrbench.common.layout import (
    CACHE_MANIFEST,
    EMBEDDINGS_LOCK,
    EMBEDDINGS_META,
    embeddings_dir,
    embeddings_file,
)

EMBEDDINGS_FORMAT = 1
FEATURES = "pre_logits"  # timm forward_head(..., pre_logits=True): CLS token or pooled map
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class EmbeddingSpec:
    """What a frozen backbone's embeddings depend on (besides the images): the store's key.

    ``weights`` is the SHA-256 of the weights file (``random:seed=S`` for a random init); ``precision``
    the autocast dtype of the forward pass (``fp32``, ``bf16``, ``fp16``); ``image_size`` in pixels.
    """

    weights: str
    arch: str
    model_kwargs: tuple[tuple[str, Any], ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str
    features: str = FEATURES

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``model_kwargs`` as a mapping)."""
        d = asdict(self)
        d["model_kwargs"] = dict(self.model_kwargs)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingSpec:
        """Inverse of :meth:`to_dict` (as recorded in a run's ``best.json``)."""
        return cls(weights=str(d["weights"]), arch=str(d["arch"]),
                   model_kwargs=tuple(sorted((d.get("model_kwargs") or {}).items())),
                   image_size=int(d["image_size"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   precision=str(d["precision"]), features=str(d.get("features", FEATURES)))

    def key(self, cache_manifest_sha256: str) -> str:
        """The folder name under ``CACHE/embeddings/`` for this spec over that cache."""
        from cxrbench.common.provenance import stable_hash

        return stable_hash({"format": EMBEDDINGS_FORMAT, "cache_manifest_sha256": cache_manifest_sha256,
                            **self.to_dict()}, length=16)


def weights_fingerprint(path: str | os.PathLike | None, seed: int) -> str:
    """SHA-256 of a weights file (computed once per process and file version), or ``random:seed=S``."""
    if path is None:
        return f"random:seed={int(seed)}"
    p = Path(path).resolve()
    st = p.stat()
    memo = (str(p), st.st_size, st.st_mtime_ns)
    if memo not in _SHA_MEMO:
        _SHA_MEMO[memo] = file_sha256(p)
    return _SHA_MEMO[memo]


def spec_for(info, image_size: int, precision: str, seed: int) -> EmbeddingSpec:
    """The spec of the backbone :func:`cxrbench.models.build.create_model` returned ``info`` for."""
    return EmbeddingSpec(weights=weights_fingerprint(info.weights, seed), arch=info.arch,
                         model_kwargs=tuple(sorted(info.model_kwargs.items())), image_size=int(image_size),
                         mean=tuple(info.mean), std=tuple(info.std), precision=precision)


def ids_sha256(image_ids) -> str:
    """SHA-256 of the image ids in order (ties a stored split to the rows it was computed for)."""
    return hashlib.sha256("\n".join(map(str, image_ids)).encode("utf-8")).hexdigest()


@dataclass
class SplitEmbeddings:
    """One split's embeddings: ``values`` float32 ``[N, D]`` and whether they were ``reused``."""

    values: np.ndarray
    reused: bool
    key: str
    path: Path | None  # None when the cache folder could not be written
    batch_size: int | None = None


class EmbeddingStore:
    """The embeddings of one :class:`EmbeddingSpec` beside one cache."""

    def __init__(self, cache_dir: str | os.PathLike, spec: EmbeddingSpec) -> None:
        self.cache_dir = Path(cache_dir)
        self.spec = spec
        self.cache_sha = file_sha256(self.cache_dir / CACHE_MANIFEST)
        self.key = spec.key(self.cache_sha)
        self.folder = embeddings_dir(self.cache_dir, self.key)

    def path(self, split: str) -> Path:
        return embeddings_file(self.cache_dir, self.key, split)

    def writable(self) -> bool:
        """True when the sub-folder exists or can be made (a read-only cache: False)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.access(self.folder, os.W_OK)
        except OSError:
            return False

    def load(self, split: str, image_ids) -> np.ndarray | None:
        """The stored embeddings of ``split`` when they belong to exactly these rows, else None."""
        from safetensors import SafetensorError, safe_open

        from cxrbench.data.dataset import check_split_read

        path = self.path(split)
        check_split_read(split, str(path))
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                if meta.get("key") != self.key or meta.get("image_ids_sha256") != ids_sha256(image_ids):
                    return None
                values = f.get_tensor("embeddings")
        except (SafetensorError, OSError):
            return None  # damaged: recomputed and replaced
        return values.astype(np.float32, copy=False)

    def save(self, split: str, image_ids, values: np.ndarray, batch_size: int | None) -> Path:
        """Write ``split``'s embeddings atomically and record them in ``embeddings.json``."""
        from safetensors.numpy import save_file

        from cxrbench.common.provenance import now_iso, provenance

        path = self.path(split)
        sha = ids_sha256(image_ids)
        with atomic_path(path) as tmp:
            save_file({"embeddings": np.ascontiguousarray(values, dtype=np.float32)}, str(tmp),
                      metadata={"key": self.key, "image_ids_sha256": sha, "n": str(len(values))})
        meta_path = self.folder / EMBEDDINGS_META
        doc = read_json(meta_path) if meta_path.is_file() else {}
        doc = doc if isinstance(doc, dict) and doc.get("key") == self.key else {}
        splits = dict(doc.get("splits") or {})
        splits[split] = {"n": int(len(values)), "image_ids_sha256": sha, "batch_size": batch_size,
                         "created": now_iso()}
        atomic_write_json(meta_path, {
            "format": EMBEDDINGS_FORMAT, "key": self.key, "spec": self.spec.to_dict(),
            "cache": {"path": str(self.cache_dir.resolve()), "manifest_sha256": self.cache_sha},
            "dim": int(values.shape[1]), "splits": splits, "provenance": provenance()})
        return path


def split_embeddings(store: EmbeddingStore, split: str, dataset,
                     compute: Callable[[], tuple[np.ndarray, int]], env=None) -> SplitEmbeddings:
    """``split``'s embeddings from ``store``, else ``compute()`` (-> ``(values, batch size)``), stored.

    ``dataset`` is the split's :class:`cxrbench.data.dataset.CacheDataset` (its image ids tie the file
    to the rows). Under torchrun every rank calls this (``compute`` shards the work); rank 0 decides,
    reads and writes, the others follow.
    """
    from cxrbench.common import distributed as dist_
    from cxrbench.common.fileio import file_lock

    env = env or dist_.DistEnv()
    ids = dataset.image_ids
    writable = dist_.broadcast_object(store.writable() if env.is_main else None, env)
    lock = file_lock(store.folder / EMBEDDINGS_LOCK) if writable and env.is_main else contextlib.nullcontext()
    with lock:
        found = store.load(split, ids) if (env.is_main and writable) else None
        reuse = dist_.broadcast_object(found is not None, env)
        if reuse:
            values = found if found is not None else store.load(split, ids)
            if values is None:
                raise InputError("stored embeddings are not readable on every process",
                                 where=str(store.path(split)),
                                 fix="put the cache on a filesystem every process sees")
            return SplitEmbeddings(values, True, store.key, store.path(split))
        values, batch = compute()
        if len(values) != len(ids):
            raise RuntimeError(f"{len(values)} embeddings for {len(ids)} images")
        path = store.save(split, ids, values, batch) if (writable and env.is_main) else None
    dist_.barrier(env)
    return SplitEmbeddings(values, False, store.key, path if writable else None, batch)
