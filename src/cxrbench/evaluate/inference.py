"""The one prediction path: a trained run scored over a cache split (Contract-4 predictions).

:func:`load_run_model` rebuilds a run's best model from ``best.safetensors`` + ``best.json`` alone
(no pretrained download: the architecture is created empty and every weight is loaded);
:func:`predict_split` scores one split of the run's cache, or of another cache over a subset of
the run's findings (external validation), in the precision the run was trained in, and returns
``image_id``, ``patient_id``, ``p_<finding>`` (sigmoid probabilities) and ``y_<finding>`` (labels,
NaN = unknown). ``cxrbench evaluate``, ``cxrbench predict`` and the study all come through here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrbench.common.distributed import resolve_device
from cxrbench.common.errors import InputError
from cxrbench.train.checkpoint import load_best
from cxrbench.train.runfolder import read_run_config


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device | None = None,
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The run's best model in eval mode on ``device`` (default CPU), and its ``best.json``."""
    from cxrbench.models.build import create_model

    run_dir = Path(run_dir)
    weights, meta = load_best(run_dir)
    # an empty model of the run's architecture (no download), then every weight from the run
    model, _ = create_model(f"random-{meta['arch']}", len(meta["findings"]),
                            image_size=int(meta["image_size"]), **(meta.get("model_kwargs") or {}))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"best.safetensors does not fit architecture {meta['arch']!r} (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})", where=str(run_dir),
                         fix="the run was trained with another cxrbench/timm version; re-train it")
    return model.to(resolve_device(device or "cpu")).eval(), meta


def run_autocast(meta: dict[str, Any], device: torch.device) -> contextlib.AbstractContextManager | None:
    """Autocast in the precision the run was trained and validated in (bf16/fp16 on CUDA), else None."""
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(meta.get("precision", "fp32"))
    return torch.autocast(device.type, dtype=amp) if amp is not None and device.type == "cuda" else None


def predict_split(run_dir: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None,
                  batch_size: int = 64, device: str | torch.device | None = None,
                  findings: Sequence[str] | None = None) -> pd.DataFrame:
    """Predictions of the run's best model on ``split`` of its cache (or of ``cache_dir``).

    Returns one row per image: ``image_id``, ``patient_id``, then ``p_<finding>`` (probability,
    float32) and ``y_<finding>`` (label: 1, 0 or NaN) for each of the run's findings, or for
    ``findings`` (a subset of them, in that order: external validation on a cache that has only
    those). The cache must have been prepared with the run's recipe (size, resize, equalization),
    so the model sees the pixels it was trained on.
    """
    from cxrbench.data.augment import BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.models.forward import predict_dataset

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, meta = load_run_model(run_dir, dev)
    wanted = list(meta["findings"]) if findings is None else list(findings)
    unknown = [f for f in wanted if f not in meta["findings"]]
    if unknown:
        raise InputError(f"the run does not predict {', '.join(unknown)}", where=str(run_dir),
                         fix=f"the run's findings: {', '.join(meta['findings'])}")
    cols_idx = [meta["findings"].index(f) for f in wanted]
    cache_dir = Path(cache_dir) if cache_dir is not None else run_cache_dir(run_dir)
    ds = CacheDataset(cache_dir, split=split, findings=wanted)
    check_recipe(meta, ds.recipe, where=str(cache_dir))
    tf = BatchTransform(meta["mean"], meta["std"], out_size=int(meta["image_size"])).to(dev).eval()
    _, logits = predict_dataset(model, ds, tf, dev, batch_size=batch_size, autocast=run_autocast(meta, dev))
    probs = 1.0 / (1.0 + np.exp(-logits[:, cols_idx].astype(np.float64)))
    cols: dict[str, Any] = {"image_id": ds.image_ids.astype(str), "patient_id": ds.patient_ids.astype(str)}
    for k, f in enumerate(wanted):
        cols[f"p_{f}"] = probs[:, k].astype(np.float32)
    for k, f in enumerate(wanted):
        cols[f"y_{f}"] = ds.labels[:, k]
    return pd.DataFrame(cols)


def run_cache_dir(run_dir: str | os.PathLike) -> Path:
    """The cache a run was trained on, from its ``config.yaml``."""
    doc = read_run_config(run_dir)
    cache = (doc.get("cache") or {}).get("path")
    if not cache or not Path(cache).is_dir():
        raise InputError(f"the run's cache {cache!r} is not available", where=str(Path(run_dir)),
                         fix="pass the cache explicitly (--cache / cache_dir=...)")
    return Path(cache)


def check_recipe(meta: dict[str, Any], recipe: dict[str, Any], where: str) -> None:
    """InputError when a cache's recipe differs from the one the model was trained with (a run
    trained before the resampler was recorded used ``pil-box``)."""
    trained = {"resample": "pil-box", **(meta.get("recipe") or {})}
    recipe = {"resample": "pil-box", **recipe}
    for key in ("size", "resize", "equalize", "resample"):
        if key in trained and trained[key] != recipe.get(key):
            raise InputError(f"the cache was prepared with {key}={recipe.get(key)!r} but the model was "
                             f"trained on {key}={trained[key]!r}", where=where,
                             fix=f"prepare the cache with --size {trained.get('size')} --resize "
                                 f"{trained.get('resize')} "
                                 f"{'--equalize' if trained.get('equalize') else '--no-equalize'} "
                                 f"--resample {trained.get('resample')}")
