"""Run a trained model over a cache split: the predictions of Contract 4.

:func:`load_run_model` rebuilds a run's best model from ``best.safetensors`` + ``best.json`` alone
(no pretrained download: the architecture is created empty and every weight is loaded);
:func:`predict_split` scores one split of a cache and returns ``image_id``, ``patient_id``,
``p_<finding>`` (sigmoid probabilities) and ``y_<finding>`` (labels, NaN = unknown).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrbench.checkpoint import load_best
from cxrbench.errors import InputError


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device | None = None,
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The run's best model in eval mode on ``device`` (default CPU), and its ``best.json``."""
    from cxrbench.models import create_model

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


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, transform: nn.Module, device: torch.device,
                    batch_size: int = 64, env=None, autocast: contextlib.AbstractContextManager | None = None,
                    workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``float32 [N, K]`` for every item of ``dataset`` (rows in dataset order).

    Under torchrun (``env`` with world size > 1) each rank scores every ``world_size``-th item and
    the results are gathered, so every rank returns the whole split.
    """
    from torch.utils.data import DataLoader

    from cxrbench import distributed as dist_

    env = env or dist_.DistEnv()
    mine = np.arange(env.rank, len(dataset), env.world_size)
    model.eval()
    transform.eval()
    # each "index" is a list of positions: a CacheDataset reads the whole batch with one memmap call
    chunks = [mine[i:i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_size=None, sampler=chunks, num_workers=workers,
                        pin_memory=device.type == "cuda")
    out = []
    for images, _ in loader:
        with autocast or contextlib.nullcontext():
            logits = model(transform(images.to(device, non_blocking=True)))
        out.append(logits.float().cpu())
    k = out[0].shape[1] if out else len(getattr(dataset, "findings", []))
    logits = torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.float32)
    idx, logits = dist_.gather_predictions(mine, logits, env)
    if len(idx) != len(dataset):
        raise RuntimeError(f"gathered {len(idx)} predictions for {len(dataset)} items")
    return idx, logits


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device (CUDA when available if None); InputError for bad names."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}", where="--device",
                         fix="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but is not available", where="--device", fix="use --device cpu")
    return dev


def predict_split(run_dir: str | os.PathLike, split: str, cache_dir: str | os.PathLike | None = None,
                  batch_size: int = 64, device: str | torch.device | None = None) -> pd.DataFrame:
    """Predictions of the run's best model on ``split`` of its cache (or of ``cache_dir``).

    Returns one row per image: ``image_id``, ``patient_id``, then ``p_<finding>`` (probability,
    float32) and ``y_<finding>`` (label: 1, 0 or NaN) for each of the run's findings. The cache
    must hold the run's findings and have been prepared with the run's recipe (size, resize,
    equalization), so the model sees the pixels it was trained on.
    """
    from cxrbench.augment import BatchTransform
    from cxrbench.data import CacheDataset

    run_dir = Path(run_dir)
    dev = resolve_device(device)
    model, meta = load_run_model(run_dir, dev)
    cache_dir = Path(cache_dir) if cache_dir is not None else run_cache_dir(run_dir)
    ds = CacheDataset(cache_dir, split=split, findings=meta["findings"])
    check_recipe(meta, ds.recipe, where=str(cache_dir))
    tf = BatchTransform(meta["mean"], meta["std"], out_size=int(meta["image_size"])).to(dev).eval()
    # score with the precision the run was trained (and validated) in
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(meta.get("precision", "fp32"))
    autocast = torch.autocast(dev.type, dtype=amp) if amp is not None and dev.type == "cuda" else None
    _, logits = predict_dataset(model, ds, tf, dev, batch_size=batch_size, autocast=autocast)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    cols: dict[str, Any] = {"image_id": ds.image_ids.astype(str), "patient_id": ds.patient_ids.astype(str)}
    for k, f in enumerate(meta["findings"]):
        cols[f"p_{f}"] = probs[:, k].astype(np.float32)
    for k, f in enumerate(meta["findings"]):
        cols[f"y_{f}"] = ds.labels[:, k]
    return pd.DataFrame(cols)


def run_cache_dir(run_dir: str | os.PathLike) -> Path:
    """The cache a run was trained on, from its ``config.yaml``."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError("no config.yaml in the run folder", where=str(run_dir),
                         fix="pass the cache explicitly (cache_dir=...)")
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    cache = (doc.get("cache") or {}).get("path")
    if not cache or not Path(cache).is_dir():
        raise InputError(f"the run's cache {cache!r} is not available", where=str(path),
                         fix="pass the cache explicitly (cache_dir=...)")
    return Path(cache)


def check_recipe(meta: dict[str, Any], recipe: dict[str, Any], where: str) -> None:
    """InputError when a cache's recipe differs from the one the model was trained with."""
    trained = meta.get("recipe") or {}
    for key in ("size", "resize", "equalize"):
        if key in trained and trained[key] != recipe.get(key):
            raise InputError(f"the cache was prepared with {key}={recipe.get(key)!r} but the model was "
                             f"trained on {key}={trained[key]!r}", where=where,
                             fix=f"prepare the cache with --size {trained.get('size')} --resize "
                                 f"{trained.get('resize')} "
                                 f"{'--equalize' if trained.get('equalize') else '--no-equalize'}")
