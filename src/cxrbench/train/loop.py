"""The fine-tuning loop: one process or torchrun DDP, exact resume, validation-based selection.

Read top to bottom: :func:`train` sets up the process (device, process group, RNG, determinism)
and :func:`_run` is the loop. In one optimizer step each process reads ``batch_size /
(world_size * grad_accum)`` images per micro-step; gradients are synchronized only on the last
micro-step; the learning rate is a pure function of the step (:mod:`cxrbench.train.optim`).

Loss: BCE-with-logits with per-finding ``pos_weight`` (negatives/positives on the training split),
masked where the label is unknown (NaN), normalized by the number of known labels of the whole
global micro-batch, so N processes compute the same gradient as one process with the same batch.

Selection: after every epoch the model is scored on the **validation** split (mean AUROC over
findings with both classes); the best epoch is written to ``best.safetensors`` + ``best.json`` and
training stops after ``patience`` epochs without improvement. The test split is never opened.

Resume: ``checkpoints/last.pt`` is written atomically at every epoch end and every
``checkpoint_every`` steps; it holds the model, optimizer, grad scaler, schedule, every rank's RNG
states and the position in the epoch, so a killed run continues with the very same batches,
augmentations and updates (bit-identical on CPU in deterministic mode).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.common import distributed as dist_
from cxrbench.common.errors import InputError, TrainingDiverged
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import RUN_BEST_WEIGHTS
from cxrbench.common.progress import console
from cxrbench.train.adapters import setup_adaptation
from cxrbench.train.checkpoint import (
    LAST,
    capture_rng,
    load_last,
    resume_epoch,
    save_best,
    save_last,
)
from cxrbench.train.config import FROZEN_ADAPTATIONS, TrainConfig
from cxrbench.train.console import ProgressBar, forward_gflops, print_summary
from cxrbench.train.optim import LRSchedule, param_groups, unwrap
from cxrbench.train.runfolder import (
    best_meta,
    build_run_model,
    check_run_dir,
    clean_interrupted_writes,
    start_run_dir,
    write_run_config,
)
from cxrbench.train.runlog import Rank0Writer
from cxrbench.train.setup import classifier, head_names, masked_bce_sum, open_data, resolve_precision
from cxrbench.train.tracking import open_tracker


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run reports."""

    run_dir: Path
    best_metric: float
    best_epoch: int
    epochs_done: int
    steps: int
    stopped_early: bool
    resumed: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def train(cfg: TrainConfig, *, overwrite: bool = False, quiet: bool = False,
          on_step: Callable[[int, int], None] | None = None,
          loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.out``; returns its summary (on every rank).

    ``on_step(step, epoch)`` is called after every optimizer step; ``loss_hook(step, loss_sum)``
    may replace the summed loss of a micro-batch (tests use both, e.g. to inject a NaN).
    """
    env = dist_.detect()
    device = dist_.device_for(env, cfg.device)
    env = dist_.init(device, env)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS
            torch.use_deterministic_algorithms(True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        # all global RNG use stays inside this fork; the caller's RNG state is restored afterwards
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return _run(cfg, env, device, overwrite=overwrite, quiet=quiet or not env.is_main,
                        on_step=on_step, loss_hook=loss_hook)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark
        dist_.destroy(env)


def _seed(seed: int, *key: int) -> int:
    """A 63-bit seed derived from ``seed`` and a key (rank, stream): independent streams, no collisions."""
    return int(np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _run(cfg: TrainConfig, env: dist_.DistEnv, device: torch.device, *, overwrite: bool, quiet: bool,
         on_step, loss_hook) -> TrainResult:
    from cxrbench.data.augment import AugmentConfig, BatchTransform
    from cxrbench.data.loader import ResumableSampler, make_loader

    if cfg.adaptation in FROZEN_ADAPTATIONS:  # linear / knn on cached embeddings: no backpropagation
        from cxrbench.train.frozen import run_frozen

        return run_frozen(cfg, env, device, overwrite=overwrite, quiet=quiet)
    run_dir = Path(cfg.out)

    # -- data: train and val splits only ---------------------------------------------------------
    data = open_data(cfg)
    train_ds, val_ds, findings, cache_sha, pos_weight = (data.train, data.val, data.findings, data.cache_sha,
                                                         data.pos_weight)
    labels_done = data.labels_done

    # -- run folder: new, resumed, or restarted ----------------------------------------------------
    resume = check_run_dir(run_dir, cfg, overwrite, cache_sha)  # no side effects before the setup succeeds
    if resume and env.is_main:
        clean_interrupted_writes(run_dir)  # e.g. checkpoints/.last.pt.*.tmp of a SIGKILLed save
    state = load_last(run_dir / LAST) if resume else None
    if state is not None and state["world_size"] != env.world_size:
        n = state["world_size"]
        raise InputError(f"the run was trained with {n} process(es), now {env.world_size}",
                         where=str(run_dir),
                         fix=f"resume with torchrun --nproc_per_node={n} (exact resume needs the same "
                             "sharding) or restart with --overwrite")

    # -- model -------------------------------------------------------------------------------------
    image_size = cfg.image_size or train_ds.size
    model, info, overlap_note = build_run_model(cfg, findings, image_size)  # same on every rank
    head = classifier(model)
    adaptation = setup_adaptation(cfg, model, head)  # full, linear probe or LoRA (on the CPU, seeded)
    head_keys = head_names(model, head)
    torch.manual_seed(_seed(cfg.seed, env.rank, 1))  # dropout etc.: one stream per rank
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    # -- optimization ------------------------------------------------------------------------------
    world, accum = env.world_size, cfg.grad_accum
    micro = cfg.micro_batch(world)
    sampler = ResumableSampler(len(train_ds), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=world)
    n_micro = math.ceil(sampler.num_samples / micro)  # micro-batches per epoch per rank
    steps_per_epoch = math.ceil(n_micro / accum)
    total_steps = steps_per_epoch * cfg.epochs
    schedule = LRSchedule(cfg.lr, total_steps, round(cfg.warmup_epochs * steps_per_epoch), cfg.schedule,
                          cfg.min_lr)
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    precision, amp_dtype = resolve_precision(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    pw = torch.as_tensor(pos_weight, device=device) if cfg.pos_weight else None

    augment = AugmentConfig(hflip=cfg.hflip, rotate=cfg.rotate) if cfg.augment else None
    train_tf = BatchTransform(info.mean, info.std, out_size=image_size, augment=augment)
    eval_tf = BatchTransform(info.mean, info.std, out_size=image_size).eval()
    train_tf.to(device).train()
    eval_tf.to(device)
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(_seed(cfg.seed, env.rank, 2))

    # -- restore or write the run's config ---------------------------------------------------------
    progress = {"epoch": 0, "micro": 0, "step": 0, "finished": False, "stopped_early": False}
    best = {"value": -math.inf, "epoch": -1, "bad_epochs": 0}
    history: list[dict[str, Any]] = []
    rng_state, resumed_loss = None, [0.0, 0.0]
    if state is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if state["schedule"] != schedule.state_dict():
            raise InputError("the checkpoint's lr schedule differs from this config's",
                             where=str(run_dir / LAST),
                             fix="resume with the same data and options, or restart with --overwrite")
        progress, best, history = dict(state["progress"]), dict(state["best"]), list(state["history"])
        rng_state = state["ranks"][env.rank]["rng"]
        resumed_loss = state["ranks"][env.rank]["loss"]  # the running loss since the last log line
        del state
    elif env.is_main:
        start_run_dir(run_dir, overwrite)
        write_run_config(run_dir, cfg, env, train_ds, val_ds, info, image_size, cache_sha,
                          dict(micro_batch=micro, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                               warmup_steps=schedule.warmup_steps, precision=precision,
                               pos_weight=dict(zip(findings, map(float, pos_weight), strict=True)),
                               **({"training_labels": labels_done} if labels_done else {})))
    dist_.barrier(env)

    fwd = torch.compile(model) if cfg.compile else model
    if env.enabled:
        fwd = nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    loader = make_loader(train_ds, micro, sampler=sampler, num_workers=cfg.workers,
                         pin_memory=device.type == "cuda")

    n_params = sum(p.numel() for p in model.parameters())
    tracker = None
    if env.is_main and not progress["finished"]:
        tracker = open_tracker(cfg.tracker, run_dir, project=cfg.tracker_project, name=cfg.tracker_name,
                               resume=resume, params={**cfg.to_dict(), "arch": info.arch, "world_size": world,
                                                      "num_params": n_params, "findings": findings,
                                                      "trainable_params": adaptation.trainable_params,
                                                      "cache_manifest_sha256": cache_sha})
    # drops the log lines of redone steps
    writer = Rank0Writer(run_dir, env.is_main, resume_step=progress["step"], tracker=tracker)
    if not quiet:
        print_summary(cfg, env, device, info, image_size, train_ds, val_ds, micro, steps_per_epoch,
                       total_steps, precision, n_params, sum(p.numel() for p in trainable), groups,
                       forward_gflops(model, eval_tf, train_ds.size, device), overlap_note, progress, resume,
                       adaptation.describe())
    if progress["finished"]:
        writer.close()
        if not quiet:
            console.print(f"[bold]run already complete[/] ({progress['epoch']} epochs, best val mean AUROC "
                          f"{best['value']:.4f} at epoch {best['epoch']}); nothing to do")
        return _result(run_dir, best, progress, history, resume)

    writer.log({"kind": "start", "step": progress["step"], "epoch": progress["epoch"] + 1, "resumed": resume,
                "world_size": world, "device": str(device), "precision": precision, "time": time.time(),
                **adaptation.record()})

    def checkpoint() -> None:
        """Gather every rank's RNG states and running loss; rank 0 writes last.pt."""
        mine = {"rng": capture_rng({"augment": aug_gen}), "loss": [float(loss_sum), float(loss_cnt)]}
        ranks = dist_.all_gather_objects(mine, env)
        if env.is_main:
            save_last(run_dir / LAST, {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "schedule": schedule.state_dict(), "ranks": ranks,
                "progress": dict(progress), "best": dict(best), "history": history,
                "world_size": world, "config": cfg.identity()})

    def check_finite(loss_sum: torch.Tensor) -> None:
        """Stop on a NaN/Inf loss before anything derived from it is saved."""
        if dist_.any_flag(not bool(torch.isfinite(loss_sum).item()), env, device):
            last = run_dir / LAST
            kept = (f"the last good checkpoint is kept in {last} (resume after changing nothing would "
                    "diverge again: restart with --overwrite)" if last.is_file() else
                    "no checkpoint was written before it (restart with --overwrite)")
            raise TrainingDiverged(
                f"the training loss became NaN/Inf by step {progress['step']} "
                f"(epoch {progress['epoch'] + 1})",
                where=str(run_dir),
                fix=f"lower --lr, add --clip-grad 1.0 or use --precision bf16/fp32; {kept}")

    # -- epochs ------------------------------------------------------------------------------------
    bar = ProgressBar(quiet, total_steps, progress["step"])
    t_log, img_log = time.perf_counter(), 0
    loss_sum = torch.tensor(resumed_loss[0], device=device)
    loss_cnt = torch.tensor(resumed_loss[1], device=device)
    try:
        for epoch in range(progress["epoch"], cfg.epochs):
            progress["epoch"] = epoch
            first = progress["micro"]
            adaptation.set_mode(model)
            batches = resume_epoch(loader, sampler, epoch, first, micro, rng_state, {"augment": aug_gen})
            rng_state = None
            bar.epoch(epoch, cfg.epochs)
            for m in range(first, n_micro):
                images, labels = next(batches)
                group_start = (m // accum) * accum
                group_len = min(accum, n_micro - group_start)
                last_micro = m == group_start + group_len - 1
                x = train_tf(images.to(device, non_blocking=True), generator=aug_gen)
                y = labels.to(device, non_blocking=True)
                sync = contextlib.nullcontext() if last_micro or not env.enabled else fwd.no_sync()
                with sync:
                    with autocast:
                        logits = fwd(x)
                    lsum, n = masked_bce_sum(logits.float(), y, pw)
                    if loss_hook is not None:
                        lsum = loss_hook(progress["step"], lsum)
                    # normalize by the known labels of the global micro-batch; DDP then averages the
                    # gradients over ranks, hence the factor world: the result is sum / n_known_global
                    n_known = dist_.all_reduce_sum(n.clone(), env) if env.enabled else n
                    loss = lsum * (world / group_len) / n_known.clamp(min=1.0)
                    scaler.scale(loss).backward()
                loss_sum += lsum.detach()
                loss_cnt += n
                img_log += images.shape[0] * world
                if not last_micro:
                    continue

                # -- optimizer step ----------------------------------------------------------------
                lr = schedule.apply(optimizer, progress["step"])
                if cfg.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                progress["step"] += 1
                progress["micro"] = m + 1
                step = progress["step"]
                end_of_epoch = m + 1 == n_micro

                if step % cfg.log_every == 0 or end_of_epoch:
                    check_finite(loss_sum)
                    loss_sum = dist_.all_reduce_sum(loss_sum, env)
                    loss_cnt = dist_.all_reduce_sum(loss_cnt, env)
                    now = time.perf_counter()
                    rec = {"kind": "step", "epoch": epoch + 1, "step": step, "lr": lr,
                           "loss": float(loss_sum / loss_cnt.clamp(min=1)),
                           "images_per_s": img_log / max(now - t_log, 1e-9), "time": time.time()}
                    writer.log(rec)
                    writer.scalars(step, {"train/loss": rec["loss"], "train/lr": lr,
                                          "train/images_per_s": rec["images_per_s"]})
                    bar.update(step, rec["loss"], rec["images_per_s"])
                    loss_sum.zero_()
                    loss_cnt.zero_()
                    t_log, img_log = now, 0
                else:
                    bar.update(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch:
                    check_finite(loss_sum)
                    checkpoint()
                if on_step is not None:
                    on_step(step, epoch)

            # -- end of epoch: validate, select, checkpoint ----------------------------------------
            check_finite(loss_sum)
            val = _validate(model, val_ds, eval_tf, device, env, micro, cfg.workers, autocast, pw, findings)
            improved = val["mean_auroc"] > best["value"]
            if improved:
                best.update(value=val["mean_auroc"], epoch=epoch + 1, bad_epochs=0)
                if env.is_main:
                    save_best(run_dir, adaptation.best_weights(unwrap(model)),
                              best_meta(cfg, info, findings, image_size, train_ds, cache_sha, head_keys, val,
                                        epoch + 1, progress["step"], precision, adaptation.record()))
            else:
                best["bad_epochs"] += 1
            progress["stopped_early"] = cfg.patience > 0 and best["bad_epochs"] >= cfg.patience
            rec = {"kind": "epoch", "epoch": epoch + 1, "step": progress["step"],
                   "val_mean_auroc": val["mean_auroc"], "val_loss": val["loss"], "val_auroc": val["auroc"],
                   "best_epoch": best["epoch"], "improved": improved, "time": time.time()}
            history.append({k: rec[k] for k in ("epoch", "step", "val_mean_auroc", "val_loss")})
            writer.log(rec)
            writer.scalars(progress["step"], {"val/mean_auroc": val["mean_auroc"], "val/loss": val["loss"],
                                              **{f"val/auroc_{f}": v for f, v in val["auroc"].items()}})
            writer.flush()
            bar.note(f"epoch {epoch + 1}/{cfg.epochs}: val mean AUROC {val['mean_auroc']:.4f}, "
                     f"val loss {val['loss']:.4f}{' (best)' if improved else ''}")
            progress.update(epoch=epoch + 1, micro=0)
            progress["finished"] = progress["stopped_early"] or epoch + 1 == cfg.epochs
            checkpoint()
            if progress["stopped_early"]:
                bar.note(f"early stop: no improvement for {cfg.patience} epochs; best epoch {best['epoch']}")
                break
        if env.is_main:
            best_file = run_dir / RUN_BEST_WEIGHTS
            writer.finish({"best_val_mean_auroc": best["value"], "best_epoch": best["epoch"],
                           "epochs_done": progress["epoch"], "steps": progress["step"],
                           "best_weights_sha256": file_sha256(best_file) if best_file.is_file() else ""})
    finally:
        bar.close()
        writer.close()
    return _result(run_dir, best, progress, history, resume)


@torch.no_grad()
def _validate(model, val_ds, eval_tf, device, env, micro, workers, autocast, pw, findings) -> dict[str, Any]:
    """Mean AUROC over findings with both classes, per-finding AUROC and loss on the val split."""
    from cxrbench.models.forward import predict_dataset
    from cxrbench.stats.metrics import auroc

    was_training = model.training
    _, logits = predict_dataset(model, val_ds, eval_tf, device, batch_size=max(2 * micro, 32),
                                env=env, autocast=autocast, workers=min(workers, 2))
    model.train(was_training)
    y = val_ds.labels
    t_logits, t_y = torch.from_numpy(np.array(logits)), torch.from_numpy(np.array(y))
    loss_sum, n_known = masked_bce_sum(t_logits, t_y, None if pw is None else pw.cpu())
    loss = float(loss_sum / n_known.clamp(min=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # findings with one class in val: NaN, excluded from the mean
        per = {f: auroc(y[:, k], logits[:, k]) for k, f in enumerate(findings)}
    finite = [v for v in per.values() if np.isfinite(v)]
    return {"mean_auroc": float(np.mean(finite)) if finite else float("nan"), "auroc": per, "loss": loss}


def _result(run_dir, best, progress, history, resumed) -> TrainResult:
    return TrainResult(run_dir=run_dir, best_metric=float(best["value"]), best_epoch=int(best["epoch"]),
                       epochs_done=int(progress["epoch"]), steps=int(progress["step"]),
                       stopped_early=bool(progress.get("stopped_early", False)), resumed=resumed,
                       history=history)

