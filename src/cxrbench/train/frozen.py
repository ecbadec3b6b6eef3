"""The driver of the methods that fit on a frozen backbone's cached embeddings (``regime: embeddings``).

The backbone's pooled features of the train and val splits are computed once
(:mod:`cxrbench.adapt.embeddings`: beside the cache, reused by every later run with the same weights,
model, size and precision), then the method fits on them (:meth:`Method.fit`: ``linear`` a head,
``knn`` its k and T and a bank) and the driver saves what it returns as an ordinary run.

The run folder is Contract 4 (config.yaml, best.*, log.jsonl with ``start``/``step``/``epoch``
records). ``checkpoints/last.pt`` is written once the run is finished and holds no weights: these
fits are deterministic and short, so a run killed before the end simply starts its fit again
(reusing the stored embeddings). Under torchrun every rank computes its share of the embeddings and
rank 0 fits and writes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrbench.common import distributed as dist_
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import RUN_BEST_WEIGHTS
from cxrbench.common.progress import console
from cxrbench.train.checkpoint import LAST, load_last, save_best, save_last
from cxrbench.train.config import TrainConfig
from cxrbench.train.console import ProgressBar, print_frozen_summary
from cxrbench.train.methods.base import EmbeddingFit, EmbeddingTask, Method
from cxrbench.train.result import TrainResult, train_result
from cxrbench.train.runfolder import (
    best_meta,
    build_run_model,
    check_run_dir,
    clean_interrupted_writes,
    start_run_dir,
    write_run_config,
)
from cxrbench.train.runlog import Rank0Writer
from cxrbench.train.setup import (
    TrainData,
    classifier,
    full_train_split,
    head_names,
    open_data,
    resolve_precision,
)
from cxrbench.train.tracking import open_tracker


@dataclasses.dataclass
class _Frozen:
    """The frozen backbone of one run and what its embeddings depend on."""

    model: torch.nn.Module
    info: Any
    note: str | None
    head: torch.nn.Module
    head_keys: list[str]
    image_size: int
    precision: str
    autocast: Any
    transform: torch.nn.Module
    store: Any
    record: dict[str, Any]
    n_params: int
    n_head: int


def run_frozen(cfg: TrainConfig, method: Method, env: dist_.DistEnv, device: torch.device, *, overwrite: bool,
               quiet: bool) -> TrainResult:
    """Train (or find finished) the run ``cfg.out`` of an embeddings-regime ``method``; returns its
    summary on every rank."""
    run_dir = Path(cfg.out)
    data = open_data(cfg)
    if check_run_dir(run_dir, cfg, overwrite, data.cache_sha):
        state = load_last(run_dir / LAST)
        if state.get("progress", {}).get("finished"):
            best = state["best"]
            if not quiet:
                console.print(f"[bold]run already complete[/] ({cfg.adaptation} on cached embeddings, "
                              f"best val mean AUROC {best['value']:.4f}); nothing to do")
            return train_result(run_dir, best, state["progress"], state["history"], True)
    frozen = _frozen_backbone(cfg, method, data, device)
    if env.is_main:
        if run_dir.is_dir():
            clean_interrupted_writes(run_dir)
        start_run_dir(run_dir, overwrite)
        write_run_config(run_dir, cfg, env, data.train, data.val, frozen.info, frozen.image_size,
                         data.cache_sha,
                         {"precision": frozen.precision, "embeddings": frozen.record,
                          "pos_weight": dict(zip(data.findings, map(float, data.pos_weight), strict=True)),
                          **({"training_labels": data.labels_done} if data.labels_done else {})})
    dist_.barrier(env)
    tracker = None
    if env.is_main:
        params = {**cfg.to_dict(), "arch": frozen.info.arch, "num_params": frozen.n_params,
                  "findings": data.findings, "cache_manifest_sha256": data.cache_sha}
        tracker = open_tracker(cfg.tracker, run_dir, project=cfg.tracker_project, name=cfg.tracker_name,
                               resume=False, params=params)
    # resume_step=-1: the lines of an unfinished earlier try go (the fit starts again)
    writer = Rank0Writer(run_dir, env.is_main, resume_step=-1, tracker=tracker)
    trainable = frozen.n_head if method.has_classifier and method.uses_training_data else 0
    if not quiet:
        print_frozen_summary(cfg, env, device, frozen.info, frozen.image_size, data.train, data.val,
                             frozen.n_params, method.describe(cfg, trainable, frozen.n_params),
                             frozen.precision, frozen.note)
    try:
        emb = _embeddings(cfg, data, frozen, device, env, quiet, train_split=method.uses_training_data)
        writer.log({"kind": "start", "step": 0, "epoch": 1, "resumed": False, "world_size": env.world_size,
                    "device": str(device), "precision": frozen.precision, "time": time.time(),
                    "adaptation": cfg.adaptation, "trainable_params": trainable,
                    "num_params": frozen.n_params, "embeddings": frozen.record})
        summary = None
        if env.is_main:
            train_y = data.train.labels if method.uses_training_data else data.train.labels[:0]
            task = EmbeddingTask(cfg=cfg, model=frozen.model, head=frozen.head, head_keys=frozen.head_keys,
                                 findings=data.findings, train_x=emb["train"].values,
                                 train_y=train_y,
                                 val_x=emb["val"].values, val_y=data.val.labels,
                                 train_ids=data.train.image_ids[:len(train_y)], pos_weight=data.pos_weight,
                                 embeddings_key=emb["train"].key, device=device, run_dir=run_dir,
                                 writer=writer,
                                 make_bar=lambda total: ProgressBar(quiet, total, 0))
            fit = method.fit(task)
            _save(cfg, run_dir, fit, frozen, data, trainable, env.world_size, writer)
            summary = (fit.best, fit.progress, fit.history)
        best, progress, history = dist_.broadcast_object(summary, env)
    finally:
        writer.close()
    return train_result(run_dir, best, progress, history, False)


def _frozen_backbone(cfg: TrainConfig, method: Method, data: TrainData, device: torch.device) -> _Frozen:
    """Build the backbone (head drawn from the seed), check the method can use it, and the store its
    embeddings go to."""
    from cxrbench.adapt.embeddings import EmbeddingStore, spec_for
    from cxrbench.adapt.features import feature_dim
    from cxrbench.data.augment import BatchTransform

    image_size = cfg.image_size or data.train.size
    model, info, note = build_run_model(cfg, data.findings, image_size)
    head = classifier(model)
    head_keys = head_names(model, head)
    model.to(device).eval()
    precision, amp = resolve_precision(cfg, device)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else None
    tf = BatchTransform(info.mean, info.std, out_size=image_size).to(device).eval()
    method.check_model(model, tf(data.val.batch([0, min(1, len(data.val) - 1)])[0].to(device)))
    store = EmbeddingStore(cfg.cache, spec_for(info, image_size, precision, cfg.seed))
    record = {"key": store.key, "folder": str(store.folder), "dim": feature_dim(model),
              "spec": store.spec.to_dict()}
    return _Frozen(model, info, note, head, head_keys, image_size, precision, autocast, tf, store, record,
                   sum(p.numel() for p in model.parameters()), sum(p.numel() for p in head.parameters()))


def _embeddings(cfg: TrainConfig, data: TrainData, frozen: _Frozen, device: torch.device, env: dist_.DistEnv,
                quiet: bool, train_split: bool = True) -> dict[str, Any]:
    """The train and val embeddings (stored ones reused); the train rows of the run's label budget.
    ``train_split=False`` (a method that learns nothing from it): val only, train empty."""
    from cxrbench.adapt.embeddings import SplitEmbeddings, split_embeddings
    from cxrbench.adapt.features import extract_features

    emb = {}
    full_train, kept = full_train_split(cfg, data)  # embeddings of the whole split serve every budget
    splits = (("train", full_train), ("val", data.val)) if train_split else (("val", data.val),)
    for split, ds in splits:
        def compute(ds=ds, split=split):
            return extract_features(frozen.model, ds, frozen.transform, device,
                                    batch_size=cfg.embed_batch_size, env=env, autocast=frozen.autocast,
                                    quiet=quiet,
                                    description=f"{split} embeddings")
        emb[split] = split_embeddings(frozen.store, split, ds, compute, env)
    if not train_split:
        empty = np.zeros((0, emb["val"].values.shape[1]), np.float32)
        emb["train"] = SplitEmbeddings(empty, False, emb["val"].key, None, 0)
    elif len(kept) != len(full_train):
        emb["train"] = dataclasses.replace(emb["train"], values=emb["train"].values[kept])
    how = {s: "reused" if e.reused else f"computed (batch {e.batch_size})" for s, e in emb.items()}
    if not train_split:
        how["train"] = "not needed"
    frozen.record.update(train=how["train"], val=how["val"])
    if not quiet:
        console.print(f"  embed   {frozen.record['dim']}-d pooled features, {frozen.store.folder}: "
                      f"train {how['train']}, val {how['val']}", highlight=False, soft_wrap=True)
    return emb


def _save(cfg: TrainConfig, run_dir: Path, fit: EmbeddingFit, frozen: _Frozen, data: TrainData,
          trainable: int, world_size: int, writer: Rank0Writer) -> None:
    """best.safetensors + best.json, the finished last.pt and the log's closing line (rank 0)."""
    record = {"adaptation": cfg.adaptation, "trainable_params": trainable, "num_params": frozen.n_params,
              "embeddings": frozen.record, **fit.record}
    findings = fit.findings if fit.findings is not None else data.findings
    meta = best_meta(cfg, frozen.info, findings, frozen.image_size, data.train, data.cache_sha,
                     fit.head_keys, fit.val, fit.best["epoch"], fit.progress["step"], frozen.precision,
                     record)
    save_best(run_dir, fit.weights, meta, fit.header)
    save_last(run_dir / LAST, {"adaptation": cfg.adaptation, "progress": fit.progress, "best": fit.best,
                               "history": fit.history, "world_size": world_size, "config": cfg.identity()})
    writer.finish({"best_val_mean_auroc": fit.best["value"], "best_epoch": fit.best["epoch"],
                   "epochs_done": fit.progress["epoch"], "steps": fit.progress["step"],
                   "best_weights_sha256": file_sha256(run_dir / RUN_BEST_WEIGHTS)})
