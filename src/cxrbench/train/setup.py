"""What every training driver opens first: the train and val splits with their checks, the positive
weights, the precision, and the model's head.

Shared by the fine-tuning loop (:mod:`cxrbench.train.loop`: full, linear probe, LoRA) and the
driver of the methods on cached embeddings (:mod:`cxrbench.train.frozen`: linear, kNN), so both read
the same rows and refuse the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import CACHE_MANIFEST
from cxrbench.train.config import TrainConfig
from cxrbench.train.optim import unwrap

if TYPE_CHECKING:
    from cxrbench.data.dataset import CacheDataset

TRAIN_SPLIT, VAL_SPLIT = "train", "val"  # the only splits training ever opens


@dataclass
class TrainData:
    """The two splits a run reads, their findings, the cache manifest's SHA-256 and the positive
    weights (negatives/positives per finding on train, float ``[K]``)."""

    train: CacheDataset
    val: CacheDataset
    findings: list[str]
    cache_sha: str
    pos_weight: np.ndarray
    labels_done: dict | None = None  # label budget / noise applied to ``train`` (None: all labels, clean)


def open_data(cfg: TrainConfig) -> TrainData:
    """The cache's train and val splits (never test: a real check, not an assert), the train split
    restricted to the run's label budget and its labels flipped by its label noise."""
    from cxrbench.data.budget import apply_budget
    from cxrbench.data.dataset import CacheDataset

    cache_dir = Path(cfg.cache)
    train_ds = CacheDataset(cache_dir, split=TRAIN_SPLIT, findings=cfg.findings)
    val_ds = CacheDataset(cache_dir, split=VAL_SPLIT, findings=train_ds.findings)
    for ds in (train_ds, val_ds):  # it must hold under python -O too
        if not set(ds.splits) <= {TRAIN_SPLIT, VAL_SPLIT}:
            raise RuntimeError(f"training opened the splits {sorted(set(ds.splits))}: it must never "
                               "read the test split")
    labels_done = apply_budget(train_ds, cfg.label_fraction, cfg.label_noise, cfg.label_seed)
    return TrainData(train_ds, val_ds, list(train_ds.findings), file_sha256(cache_dir / CACHE_MANIFEST),
                     pos_weight(train_ds, val_ds, cfg), labels_done)


def full_train_split(cfg: TrainConfig, data: TrainData):
    """``(dataset, positions)``: the whole train split (what cached embeddings are computed on, so
    every label budget reuses them) and the positions in it of ``data.train``'s rows (int64)."""
    import pandas as pd

    from cxrbench.data.dataset import CacheDataset

    if not (data.labels_done or {}).get("budget"):
        return data.train, np.arange(len(data.train))
    full = CacheDataset(Path(cfg.cache), split=TRAIN_SPLIT, findings=data.findings)
    return full, pd.Index(np.asarray(full.image_ids)).get_indexer(np.asarray(data.train.image_ids))


def pos_weight(train_ds, val_ds, cfg: TrainConfig) -> np.ndarray:
    """negatives/positives per finding on the train split; refuses findings it cannot learn or score."""
    labels = train_ds.labels
    for k, f in enumerate(train_ds.findings):
        col = labels[:, k]
        if not (col == 1).any() or not (col == 0).any():
            missing = "positive" if not (col == 1).any() else "negative"
            raise InputError(f"finding {f!r} has no {missing} label in the train split",
                             where=str(cfg.cache),
                             fix="leave it out with --findings (the cache has: "
                                 f"{', '.join(train_ds.findings)})")
    yv = val_ds.labels
    if not any((yv[:, k] == 1).any() and (yv[:, k] == 0).any() for k in range(yv.shape[1])):
        raise InputError("no finding has both positives and negatives in the val split, so the validation "
                         "AUROC that selects the checkpoint is undefined", where=str(cfg.cache),
                         fix="re-index with a larger validation split")
    return train_ds.pos_weight()


def resolve_precision(cfg: TrainConfig, device: torch.device) -> tuple[str, torch.dtype | None]:
    """``(precision name, autocast dtype or None)``: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU has no bf16 support", where=spell("--precision"),
                         fix=spell("use --precision fp16", "use precision='fp16'"))
    return precision, {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def classifier(model: nn.Module) -> nn.Module:
    """The model's classification head (timm ``get_classifier``)."""
    base: Any = unwrap(model)
    head = base.get_classifier() if hasattr(base, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise InputError(f"cannot find the classification head of {type(base).__name__}", where="model",
                         fix="use a timm-based initialization (see `cxrbench weights list`)")
    return head


def head_names(model: nn.Module, head: nn.Module) -> list[str]:
    """State-dict keys of the head's parameters, e.g. ``['head.weight', 'head.bias']``."""
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in unwrap(model).named_parameters() if id(p) in ids]
