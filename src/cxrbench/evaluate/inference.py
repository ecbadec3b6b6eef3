"""The one prediction path: a trained run scored over a cache split (Contract-4 predictions).

:func:`load_run_model` rebuilds a run's best model from ``best.safetensors`` + ``best.json`` alone
(no pretrained download: the architecture is created empty and every weight is loaded);
:func:`predict_split` scores one split of the run's cache, or of another cache over a subset of
the run's findings (external validation), in the precision the run was trained in, and returns
``image_id``, ``patient_id``, ``p_<finding>`` (sigmoid probabilities) and ``y_<finding>`` (labels,
NaN = unknown). ``cxrbench evaluate``, ``cxrbench predict`` and the study all come through here.

A kNN run (``adaptation: knn`` in ``best.json``) has no classifier: its ``best.safetensors`` is the
frozen backbone and ``knn_bank.safetensors`` the normalized train embeddings and labels it votes
with. :func:`predict_split` then embeds the split (reusing the embeddings stored beside the cache
when they exist, :mod:`cxrbench.adapt.embeddings`) and scores it by kNN (:mod:`cxrbench.adapt.knn`)
with the k and temperature chosen on validation; :func:`load_scorer` does the same for image files.
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
from cxrbench.common.layout import RUN_KNN_BANK
from cxrbench.train.checkpoint import load_best, read_best_meta
from cxrbench.train.runfolder import read_run_config


def is_knn(meta: dict[str, Any]) -> bool:
    """True for the ``best.json`` of a kNN run (``--adaptation knn``)."""
    return meta.get("adaptation") == "knn"


def load_run_model(run_dir: str | os.PathLike, device: str | torch.device | None = None,
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """The run's best model in eval mode on ``device`` (default CPU), and its ``best.json``."""
    from cxrbench.models.build import create_model

    run_dir = Path(run_dir)
    weights, meta = load_best(run_dir)
    if is_knn(meta):
        raise InputError("a kNN run has no classifier model: it scores an image by its nearest training "
                         f"images ({RUN_KNN_BANK})", where=str(run_dir),
                         fix="evaluate and predict score it as it is; for one exportable model train "
                             "--adaptation linear (a head on the same embeddings) or full")
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
    meta = read_best_meta(run_dir)
    knn_run = is_knn(meta)
    model = None if knn_run else load_run_model(run_dir, dev)[0]
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
    if knn_run:
        probs = _knn_split(run_dir, meta, split, ds, tf, dev, batch_size, cols_idx)
    else:
        _, logits = predict_dataset(model, ds, tf, dev, batch_size=batch_size,
                                    autocast=run_autocast(meta, dev))
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


def load_backbone(run_dir: str | os.PathLike, device: torch.device) -> nn.Module:
    """A kNN run's frozen backbone (no head) in eval mode on ``device``."""
    from cxrbench.models.build import create_model

    weights, meta = load_best(run_dir)
    model, _ = create_model(f"random-{meta['arch']}", 0, image_size=int(meta["image_size"]),
                            **(meta.get("model_kwargs") or {}))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"best.safetensors does not fit architecture {meta['arch']!r} (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})", where=str(run_dir),
                         fix="the run was trained with another cxrbench/timm version; re-train it")
    return model.to(device).eval()


def knn_bank(run_dir: str | os.PathLike, meta: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, int, float]:
    """``(normalized bank [N, D], labels [N, K], k, temperature)`` of a kNN run."""
    from cxrbench.adapt.knn import load_bank

    bank, labels, _ = load_bank(Path(run_dir) / RUN_KNN_BANK)
    choice = meta.get("knn") or {}
    if "k" not in choice or "temperature" not in choice or labels.shape[1] != len(meta["findings"]):
        raise InputError("best.json and the kNN bank do not belong together", where=str(run_dir),
                         fix="re-train the run with --overwrite")
    return bank, labels, int(choice["k"]), float(choice["temperature"])


def _embedding_precision(meta: dict[str, Any], device: torch.device) -> tuple[str, Any]:
    """The run's embedding precision where the device can do it (bf16/fp16 on CUDA), else fp32."""
    spec = (meta.get("embeddings") or {}).get("spec") or {}
    wanted = str(spec.get("precision", "fp32"))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(wanted)
    if amp is None or device.type != "cuda":
        return "fp32", None
    return wanted, torch.autocast(device.type, dtype=amp)


def _knn_split(run_dir: Path, meta: dict[str, Any], split: str, ds, tf, dev: torch.device, batch_size: int,
               cols: list[int]) -> np.ndarray:
    """kNN probabilities ``[N, len(cols)]`` of a cache split (embeddings stored beside that cache)."""
    from dataclasses import replace

    from cxrbench.adapt import knn
    from cxrbench.adapt.embeddings import EmbeddingSpec, EmbeddingStore, split_embeddings
    from cxrbench.adapt.features import extract_features

    bank, labels, k, t = knn_bank(run_dir, meta)
    spec_doc = (meta.get("embeddings") or {}).get("spec")
    if not spec_doc:
        raise InputError("best.json of the kNN run has no embeddings spec", where=str(run_dir),
                         fix="re-train the run with this version of cxrbench")
    precision, autocast = _embedding_precision(meta, dev)
    store = EmbeddingStore(ds.cache_dir, replace(EmbeddingSpec.from_dict(spec_doc), precision=precision))

    def compute() -> tuple[np.ndarray, int]:
        return extract_features(load_backbone(run_dir, dev), ds, tf, dev, batch_size=batch_size,
                                autocast=autocast)

    values = split_embeddings(store, split, ds, compute).values
    return knn.predict(values, bank, labels[:, cols], k, t, device=dev).astype(np.float64)


class RunScorer:
    """Probabilities ``[B, K]`` of a run for normalized image batches: sigmoid of the model's logits,
    or a kNN run's votes (``.knn`` True; ``.model`` is then the backbone)."""

    def __init__(self, run_dir: str | os.PathLike, device: torch.device) -> None:
        self.meta = read_best_meta(run_dir)
        self.device = device
        self.knn = is_knn(self.meta)
        if self.knn:
            self.model = load_backbone(run_dir, device)
            self.bank, self.labels, self.k, self.temperature = knn_bank(run_dir, self.meta)
        else:
            self.model, self.meta = load_run_model(run_dir, device)

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> np.ndarray:
        if not self.knn:
            return torch.sigmoid(self.model(x).float()).cpu().numpy()
        from cxrbench.adapt.features import pooled_features
        from cxrbench.adapt.knn import predict

        feats = pooled_features(self.model, x).float().cpu().numpy()
        return predict(feats, self.bank, self.labels, self.k, self.temperature, device=self.device)
