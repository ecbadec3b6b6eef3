"""The one prediction path: a trained run scored over a cache split (Contract-4 predictions).

Every kind of scoring comes through a run's adaptation method (:meth:`Method.scorer`, see
:mod:`cxrbench.train.methods`): ``cxrbench evaluate``, ``cxrbench predict``, external validation and
the study. The scorer rebuilds the run from ``best.safetensors`` + ``best.json`` alone (no pretrained
download) and scores in the precision the run was trained and validated in, so thresholds chosen on
its validation scores apply to every later score. :func:`predict_split` scores one split of the run's
cache, or of another cache over a subset of the run's findings (external validation), and returns
``image_id``, ``patient_id``, ``p_<finding>`` (probabilities) and ``y_<finding>`` (labels, NaN =
unknown).
"""

from __future__ import annotations

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
from cxrbench.train.checkpoint import read_best_meta
from cxrbench.train.methods import method_of
from cxrbench.train.methods.base import Scorer
from cxrbench.train.runfolder import read_run_config


def run_scorer(run_dir: str | os.PathLike, device: str | torch.device | None = None) -> Scorer:
    """The scorer of a finished run (its method's), on ``device`` (default: automatic)."""
    meta = read_best_meta(run_dir)
    return method_of(meta).scorer(run_dir, meta, resolve_device(device))


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device | None = None,
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The run's best network in eval mode on ``device`` (default CPU), and its ``best.json``;
    InputError for a run whose method has no classifier network (kNN)."""
    meta = read_best_meta(run_dir)
    method = method_of(meta)
    if not method.has_classifier:
        raise InputError(method.no_classifier(), where=str(run_dir),
                         fix="evaluate and predict score it as it is; for one exportable model train "
                             "--adaptation linear (a head on the same embeddings) or full")
    return method.network(run_dir, meta, resolve_device(device or "cpu")), meta


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
    from cxrbench.data.dataset import CacheDataset

    run_dir = Path(run_dir)
    meta = read_best_meta(run_dir)
    wanted = list(meta["findings"]) if findings is None else list(findings)
    unknown = [f for f in wanted if f not in meta["findings"]]
    if unknown:
        raise InputError(f"the run does not predict {', '.join(unknown)}", where=str(run_dir),
                         fix=f"the run's findings: {', '.join(meta['findings'])}")
    cols_idx = [meta["findings"].index(f) for f in wanted]
    cache_dir = Path(cache_dir) if cache_dir is not None else run_cache_dir(run_dir)
    ds = CacheDataset(cache_dir, split=split, findings=wanted)
    check_recipe(meta, ds.recipe, where=str(cache_dir))
    scorer = method_of(meta).scorer(run_dir, meta, resolve_device(device))
    probs = scorer.score(ds, batch_size=batch_size, split=split)[:, cols_idx]
    cols: dict[str, Any] = {"image_id": ds.image_ids.astype(str), "patient_id": ds.patient_ids.astype(str)}
    for k, f in enumerate(wanted):
        cols[f"p_{f}"] = probs[:, k].astype(np.float32)
    for k, f in enumerate(wanted):
        cols[f"y_{f}"] = ds.labels[:, k]
    return pd.DataFrame(cols)


def run_cache_dir(run_dir: str | os.PathLike) -> Path:
    """The cache a run was trained on, from its ``config.yaml``."""
    doc = read_run_config(Path(run_dir))
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
