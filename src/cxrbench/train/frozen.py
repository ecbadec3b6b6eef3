"""``cxrbench train --adaptation linear|knn``: adapt a frozen backbone through its cached embeddings.

The backbone's pooled features of the train and val splits are computed once
(:mod:`cxrbench.adapt.embeddings`: beside the cache, reused by every later run with the same weights,
model, size and precision), then

* ``linear``: a linear head is fitted on them exactly as the loop's linear probe would
  (:mod:`cxrbench.train.linear`) and saved with the backbone as the whole model in
  ``best.safetensors``, so evaluation, prediction and export see an ordinary run;
* ``knn``: k and the vote temperature are chosen on val (:func:`cxrbench.adapt.knn.choose`), the
  normalized train embeddings and labels are written to ``RUN/knn_bank.safetensors`` and the
  backbone (no head) to ``best.safetensors``; ``evaluate.inference`` scores such runs by kNN.

The run folder is Contract 4 (config.yaml, best.*, log.jsonl with ``start``/``step``/``epoch``
records). ``checkpoints/last.pt`` is written once the run is finished and holds no weights: these
fits are deterministic and short, so a run killed before the end simply starts its fit again
(reusing the stored embeddings). Under torchrun every rank computes its share of the embeddings and
rank 0 fits and writes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from cxrbench.common import distributed as dist_
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import RUN_BEST_WEIGHTS, RUN_KNN_BANK
from cxrbench.common.progress import console
from cxrbench.train.checkpoint import LAST, load_last, save_best, save_last, state_dict_cpu
from cxrbench.train.config import TrainConfig
from cxrbench.train.console import ProgressBar, print_frozen_summary
from cxrbench.train.loop import TrainResult, _result
from cxrbench.train.runfolder import (
    best_meta,
    build_run_model,
    check_run_dir,
    clean_interrupted_writes,
    start_run_dir,
    write_run_config,
)
from cxrbench.train.runlog import Rank0Writer
from cxrbench.train.setup import classifier, full_train_split, head_names, open_data, resolve_precision
from cxrbench.train.tracking import open_tracker


def run_frozen(cfg: TrainConfig, env: dist_.DistEnv, device: torch.device, *, overwrite: bool,
               quiet: bool) -> TrainResult:
    """Train (or find finished) the linear or kNN run ``cfg.out``; returns its summary on every rank."""
    from cxrbench.adapt.embeddings import EmbeddingStore, spec_for, split_embeddings
    from cxrbench.adapt.features import check_linear_head, extract_features, feature_dim
    from cxrbench.data.augment import BatchTransform

    run_dir = Path(cfg.out)
    data = open_data(cfg)
    resume = check_run_dir(run_dir, cfg, overwrite, data.cache_sha)
    if resume:
        state = load_last(run_dir / LAST)
        if state.get("progress", {}).get("finished"):
            best = state["best"]
            if not quiet:
                console.print(f"[bold]run already complete[/] ({cfg.adaptation} on cached embeddings, "
                              f"best val mean AUROC {best['value']:.4f}); nothing to do")
            return _result(run_dir, best, state["progress"], state["history"], True)

    image_size = cfg.image_size or data.train.size
    model, info, note = build_run_model(cfg, data.findings, image_size)
    head = classifier(model)
    head_keys = head_names(model, head)
    model.to(device).eval()
    precision, amp = resolve_precision(cfg, device)
    autocast = torch.autocast(device.type, dtype=amp) if amp is not None else None
    tf = BatchTransform(info.mean, info.std, out_size=image_size).to(device).eval()
    linear = cfg.adaptation == "linear"
    if linear:
        check_linear_head(model, tf(data.val.batch([0, min(1, len(data.val) - 1)])[0].to(device)))
    store = EmbeddingStore(cfg.cache, spec_for(info, image_size, precision, cfg.seed))
    n_params = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in head.parameters())
    emb_record = {"key": store.key, "folder": str(store.folder), "dim": feature_dim(model),
                  "spec": store.spec.to_dict()}
    if env.is_main:
        if run_dir.is_dir():
            clean_interrupted_writes(run_dir)
        start_run_dir(run_dir, overwrite)
        write_run_config(run_dir, cfg, env, data.train, data.val, info, image_size, data.cache_sha,
                         {"precision": precision, "embeddings": emb_record,
                          "pos_weight": dict(zip(data.findings, map(float, data.pos_weight), strict=True)),
                          **({"training_labels": data.labels_done} if data.labels_done else {})})
    dist_.barrier(env)
    tracker = None
    if env.is_main:
        params = {**cfg.to_dict(), "arch": info.arch, "num_params": n_params, "findings": data.findings,
                  "cache_manifest_sha256": data.cache_sha}
        tracker = open_tracker(cfg.tracker, run_dir, project=cfg.tracker_project, name=cfg.tracker_name,
                               resume=False, params=params)
    # resume_step=-1: the lines of an unfinished earlier try go (the fit starts again)
    writer = Rank0Writer(run_dir, env.is_main, resume_step=-1, tracker=tracker)
    if not quiet:
        print_frozen_summary(cfg, env, device, info, image_size, data.train, data.val, n_params,
                             _describe(cfg, n_head if linear else 0, n_params), precision, note)
    bar = None
    try:
        emb = {}
        full_train, kept = full_train_split(cfg, data)  # embeddings of the whole split serve every budget
        for split, ds in (("train", full_train), ("val", data.val)):
            def compute(ds=ds, split=split):
                return extract_features(model, ds, tf, device, batch_size=cfg.embed_batch_size, env=env,
                                        autocast=autocast, quiet=quiet, description=f"{split} embeddings")
            emb[split] = split_embeddings(store, split, ds, compute, env)
        if len(kept) != len(full_train):
            emb["train"] = dataclasses.replace(emb["train"], values=emb["train"].values[kept])
        how = {s: "reused" if e.reused else f"computed (batch {e.batch_size})" for s, e in emb.items()}
        emb_record.update(train=how["train"], val=how["val"])
        if not quiet:
            console.print(f"  embed   {emb_record['dim']}-d pooled features, {store.folder}: "
                          f"train {how['train']}, val {how['val']}", highlight=False, soft_wrap=True)
        writer.log({"kind": "start", "step": 0, "epoch": 1, "resumed": False, "world_size": env.world_size,
                    "device": str(device), "precision": precision, "time": time.time(),
                    "adaptation": cfg.adaptation, "trainable_params": n_head if linear else 0,
                    "num_params": n_params, "embeddings": emb_record})
        summary = None
        if env.is_main:
            record = {"adaptation": cfg.adaptation, "trainable_params": n_head if linear else 0,
                      "num_params": n_params, "embeddings": emb_record}
            if linear:
                from cxrbench.train.linear import fit_linear_head, schedule_for

                bar = ProgressBar(quiet, schedule_for(cfg, len(data.train))[3].total_steps, 0)
                fit = fit_linear_head(cfg, model, head, emb["train"].values, data.train.labels,
                                      emb["val"].values, data.val.labels, data.findings, data.pos_weight,
                                      device, writer, bar)
                head.load_state_dict(fit.head_state)
                weights = state_dict_cpu(model)
                best, progress, history, val = fit.best, fit.progress, fit.history, fit.val
                record["linear"] = {"on": "cached embeddings", "augment": False, **fit.derived}
            else:
                weights, best, progress, history, val, record["knn"] = _fit_knn(
                    cfg, model, head_keys, emb, data, device, run_dir, writer)
                head_keys = []
            meta = best_meta(cfg, info, data.findings, image_size, data.train, data.cache_sha, head_keys, val,
                             best["epoch"], progress["step"], precision, record)
            save_best(run_dir, weights, meta)
            save_last(run_dir / LAST, {"adaptation": cfg.adaptation, "progress": progress, "best": best,
                                       "history": history, "world_size": env.world_size,
                                       "config": cfg.identity()})
            writer.finish({"best_val_mean_auroc": best["value"], "best_epoch": best["epoch"],
                           "epochs_done": progress["epoch"], "steps": progress["step"],
                           "best_weights_sha256": file_sha256(run_dir / RUN_BEST_WEIGHTS)})
            summary = (best, progress, history)
        best, progress, history = dist_.broadcast_object(summary, env)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    return _result(run_dir, best, progress, history, False)


def _describe(cfg: TrainConfig, trainable: int, total: int) -> str:
    share = f"{trainable:,} of {total:,} parameters trainable"
    if cfg.adaptation == "linear":
        return (f"linear head on cached embeddings (no augmentation), AdamW lr {cfg.lr:g}, batch "
                f"{cfg.batch_size}, up to {cfg.epochs} epochs: {share}")
    ks = ", ".join(map(str, cfg.knn_k))
    ts = ", ".join(f"{t:g}" for t in cfg.knn_temperature)
    return (f"knn on cached embeddings: cosine similarity, votes exp(s/T) per finding; k in ({ks}) x T in "
            f"({ts}) chosen on val; {share}")


def _fit_knn(cfg, model, head_keys, emb, data, device, run_dir, writer) -> tuple[Any, ...]:
    """Choose k and T on val, write the bank; ``(backbone weights, best, progress, history, val, record)``."""
    from cxrbench.adapt import knn
    from cxrbench.adapt.embeddings import ids_sha256

    bank = knn.normalize(emb["train"].values)
    k, t, grid = knn.choose(emb["val"].values, data.val.labels, bank, data.train.labels, cfg.knn_k,
                            cfg.knn_temperature, device=device)
    for row in grid:
        writer.log({"kind": "knn", "step": 0, "k": row["k"], "temperature": row["temperature"],
                    "val_mean_auroc": row["val_mean_auroc"], "time": time.time()})
    chosen = next(r for r in grid if r["k"] == k and r["temperature"] == t)
    val = {"mean_auroc": chosen["val_mean_auroc"], "auroc": dict(zip(data.findings, chosen["val_auroc"],
                                                                      strict=True)), "loss": None}
    writer.log({"kind": "epoch", "epoch": 1, "step": 0, "val_mean_auroc": val["mean_auroc"], "val_loss": None,
                "val_auroc": val["auroc"], "best_epoch": 1, "improved": True, "k": k, "temperature": t,
                "time": time.time()})
    writer.scalars(0, {"val/mean_auroc": val["mean_auroc"]})
    knn.save_bank(run_dir / RUN_KNN_BANK, bank, data.train.labels, {
        "findings": json.dumps(data.findings), "k": str(k), "temperature": repr(t),
        "embeddings_key": emb["train"].key, "image_ids_sha256": ids_sha256(data.train.image_ids)})
    bank_sha = file_sha256(run_dir / RUN_KNN_BANK)
    weights = {n: w for n, w in state_dict_cpu(model).items() if n not in head_keys}
    best = {"value": val["mean_auroc"], "epoch": 1, "bad_epochs": 0}
    progress = {"epoch": 1, "micro": 0, "step": 0, "finished": True, "stopped_early": False}
    history = [{"epoch": 1, "step": 0, "val_mean_auroc": val["mean_auroc"], "val_loss": None}]
    record = {"k": k, "temperature": t, "similarity": "cosine", "bank": RUN_KNN_BANK,
              "bank_sha256": bank_sha, "n_bank": int(bank.shape[0]),
              "grid": [{key: r[key] for key in ("k", "temperature", "val_mean_auroc")} for r in grid]}
    return weights, best, progress, history, val, record
