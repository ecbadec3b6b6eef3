"""Training a run: :func:`train` (the front door) and the fine-tuning loop of the ``loop`` regime.

Read top to bottom: :func:`train` sets up the process (device, process group, RNG, determinism) and
hands the run to its adaptation method's driver: methods on cached embeddings go to
:mod:`cxrbench.train.frozen`, the others (``full``, ``lora``) to :class:`FineTune`, the loop. In one
optimizer step each process reads ``batch_size / (world_size * grad_accum)`` images per micro-step;
gradients are synchronized only on the last micro-step; the learning rate is a pure function of the
step (:mod:`cxrbench.train.optim`).

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrbench.common import distributed as dist_
from cxrbench.common.errors import InputError, TrainingDiverged, spell
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import RUN_BEST_WEIGHTS
from cxrbench.common.progress import console
from cxrbench.stats.metrics import mean_auroc
from cxrbench.train.checkpoint import (
    LAST,
    capture_rng,
    load_last,
    resume_epoch,
    save_best,
    save_last,
    stream_seed,
)
from cxrbench.train.config import TrainConfig
from cxrbench.train.console import ProgressBar, forward_gflops, print_summary
from cxrbench.train.frozen import run_frozen
from cxrbench.train.loss import masked_bce_sum
from cxrbench.train.methods import get_method
from cxrbench.train.methods.base import Method
from cxrbench.train.optim import LRSchedule, param_groups, unwrap
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
from cxrbench.train.setup import classifier, head_names, open_data, resolve_precision
from cxrbench.train.tracking import open_tracker

__all__ = ["FineTune", "TrainResult", "train"]

StepHook = Callable[[int, int], None]
LossHook = Callable[[int, torch.Tensor], torch.Tensor]


def train(cfg: TrainConfig, *, overwrite: bool = False, quiet: bool = False, on_step: StepHook | None = None,
          loss_hook: LossHook | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg.out``, as ``cxrbench train``; returns its summary (on every rank).

    Args:
        cfg: the run's :class:`~cxrbench.train.config.TrainConfig` (cache, init, out and the recipe).
        overwrite: restart an existing run folder from scratch (only the run's own files are
            deleted); without it an existing run is resumed exactly (its identity options and cache
            must match) or, when finished, returned as it is.
        quiet: no progress bar or log lines on the console (``log.jsonl`` is written either way).
        on_step: ``on_step(step, epoch)`` after every optimizer step.
        loss_hook: ``loss_hook(step, loss_sum)`` may replace the summed loss of a micro-batch (tests
            use both, e.g. to inject a NaN).

    Returns:
        :class:`~cxrbench.train.result.TrainResult`: ``run_dir``, ``best_metric`` (validation mean
        AUROC in [0, 1]), ``best_epoch``, ``epochs_done``, ``steps``, ``stopped_early``, ``resumed``,
        ``history`` (one dict per epoch). The run folder holds ``best.safetensors``/``best.json``
        (the checkpoint with the best validation mean AUROC), ``config.yaml`` and ``log.jsonl``.
        The caller's torch RNG and determinism settings are left as they were.

    Example::

        cfg = cxrbench.TrainConfig(cache="cache/nih-224", init="random-vit-test", out="runs/a",
                                   epochs=2, batch_size=16, seed=0, workers=0)
        result = cxrbench.train(cfg)
        print(result.best_metric, result.run_dir / "best.safetensors")
    """
    method = get_method(cfg.adaptation)
    method.check_init(cfg.init, where="init")
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
        quiet = quiet or not env.is_main
        # all global RNG use stays inside this fork; the caller's RNG state is restored afterwards
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if method.regime == "embeddings":  # linear / knn on cached embeddings: no backpropagation
                return run_frozen(cfg, method, env, device, overwrite=overwrite, quiet=quiet)
            loop = FineTune(cfg, method, env, device, overwrite=overwrite, quiet=quiet)
            return loop.run(on_step, loss_hook)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark
        dist_.destroy(env)


class FineTune:
    """The fine-tuning loop of one run (``full``, ``lora``): set up in the constructor, run by :meth:`run`."""

    def __init__(self, cfg: TrainConfig, method: Method, env: dist_.DistEnv, device: torch.device, *,
                 overwrite: bool, quiet: bool) -> None:
        self.cfg, self.env, self.device, self.quiet = cfg, env, device, quiet
        self.run_dir = run_dir = Path(cfg.out)
        # -- data: train and val splits only -----------------------------------------------------------
        self.data = data = open_data(cfg)
        # -- run folder: new, resumed, or restarted ----------------------------------------------------
        self.resume = check_run_dir(run_dir, cfg, overwrite, data.cache_sha)  # no side effects before setup
        if self.resume and env.is_main:
            clean_interrupted_writes(run_dir)  # e.g. checkpoints/.last.pt.*.tmp of a SIGKILLed save
        state = load_last(run_dir / LAST) if self.resume else None
        if state is not None and state["world_size"] != env.world_size:
            n = state["world_size"]
            raise InputError(f"the run was trained with {n} process(es), now {env.world_size}",
                             where=str(run_dir),
                             fix=f"resume with torchrun --nproc_per_node={n} (exact resume needs the same "
                                 f"sharding) or restart with {spell('--overwrite')}")
        # -- model ---------------------------------------------------------------------------------------
        self.image_size = cfg.image_size or data.train.size
        self.model, self.info, self.overlap_note = build_run_model(cfg, data.findings, self.image_size)
        head = classifier(self.model)
        self.adaptation = method.prepare(cfg, self.model, head)  # full, linear probe or LoRA (CPU, seeded)
        self.head_keys = head_names(self.model, head)
        torch.manual_seed(stream_seed(cfg.seed, env.rank, 1))  # dropout etc.: one stream per rank
        self.model.to(device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._optimization()
        self._transforms()
        self._restore_or_start(state, overwrite)

    def _optimization(self) -> None:
        """Sampler, micro-batches, schedule, optimizer, grad scaler, positive weights."""
        from cxrbench.data.loader import ResumableSampler

        cfg, env, device = self.cfg, self.env, self.device
        self.world, self.accum = env.world_size, cfg.grad_accum
        self.micro = cfg.micro_batch(self.world)
        self.sampler = ResumableSampler(len(self.data.train), shuffle=True, seed=cfg.seed, rank=env.rank,
                                        world_size=self.world)
        self.n_micro = math.ceil(self.sampler.num_samples / self.micro)  # micro-batches per epoch per rank
        self.steps_per_epoch = math.ceil(self.n_micro / self.accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.schedule = LRSchedule(cfg.lr, self.total_steps, round(cfg.warmup_epochs * self.steps_per_epoch),
                                   cfg.schedule, cfg.min_lr)
        self.groups = param_groups(self.model, cfg.weight_decay, cfg.layer_decay)
        self.optimizer = torch.optim.AdamW(self.groups, lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay, fused=device.type == "cuda")
        self.precision, amp_dtype = resolve_precision(cfg, device)
        self.amp_dtype = amp_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.pw = torch.as_tensor(self.data.pos_weight, device=device) if cfg.pos_weight else None

    def _transforms(self) -> None:
        """The training transform (augmentation on the device, from its own generator) and the eval one."""
        from cxrbench.data.augment import AugmentConfig, BatchTransform

        cfg, info = self.cfg, self.info
        augment = AugmentConfig(hflip=cfg.hflip, rotate=cfg.rotate) if cfg.augment else None
        self.train_tf = BatchTransform(info.mean, info.std, out_size=self.image_size, augment=augment)
        self.eval_tf = BatchTransform(info.mean, info.std, out_size=self.image_size).eval()
        self.train_tf.to(self.device).train()
        self.eval_tf.to(self.device)
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(stream_seed(cfg.seed, self.env.rank, 2))

    def _restore_or_start(self, state: dict[str, Any] | None, overwrite: bool) -> None:
        """Restore the checkpoint's model, optimizer, scaler and position, or write the run's config."""
        self.progress: dict[str, Any] = {"epoch": 0, "micro": 0, "step": 0, "finished": False,
                                         "stopped_early": False}
        self.best: dict[str, Any] = {"value": -math.inf, "epoch": -1, "bad_epochs": 0}
        self.history: list[dict[str, Any]] = []
        self.rng_state, resumed_loss = None, [0.0, 0.0]
        if state is not None:
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            if state["schedule"] != self.schedule.state_dict():
                raise InputError("the checkpoint's lr schedule differs from this config's",
                                 where=str(self.run_dir / LAST),
                                 fix="resume with the same data and options, or restart with "
                                     f"{spell('--overwrite')}")
            self.progress, self.best = dict(state["progress"]), dict(state["best"])
            self.history = list(state["history"])
            self.rng_state = state["ranks"][self.env.rank]["rng"]
            resumed_loss = state["ranks"][self.env.rank]["loss"]  # the running loss since the last log line
        elif self.env.is_main:
            d = self.data
            start_run_dir(self.run_dir, overwrite)
            write_run_config(self.run_dir, self.cfg, self.env, d.train, d.val, self.info, self.image_size,
                             d.cache_sha,
                             dict(micro_batch=self.micro, steps_per_epoch=self.steps_per_epoch,
                                  total_steps=self.total_steps, warmup_steps=self.schedule.warmup_steps,
                                  precision=self.precision,
                                  pos_weight=dict(zip(d.findings, map(float, d.pos_weight), strict=True)),
                                  **({"training_labels": d.labels_done} if d.labels_done else {})))
        self.loss_sum = torch.tensor(resumed_loss[0], device=self.device)
        self.loss_cnt = torch.tensor(resumed_loss[1], device=self.device)
        dist_.barrier(self.env)

    # -- the run ---------------------------------------------------------------------------------------

    def run(self, on_step: StepHook | None = None, loss_hook: LossHook | None = None) -> TrainResult:
        """Train to the end (or early stop) from where the run stands; returns its summary."""
        from cxrbench.data.loader import make_loader

        cfg, env, device = self.cfg, self.env, self.device
        fwd: nn.Module = torch.compile(self.model) if cfg.compile else self.model  # type: ignore[assignment]
        if env.enabled:
            fwd = nn.parallel.DistributedDataParallel(
                fwd, device_ids=[device.index] if device.type == "cuda" else None)
        self.fwd = fwd
        self.autocast = torch.autocast(device.type, dtype=self.amp_dtype or torch.float32,
                                       enabled=self.amp_dtype is not None)
        self.loader = make_loader(self.data.train, self.micro, sampler=self.sampler, num_workers=cfg.workers,
                                  pin_memory=device.type == "cuda")
        self.writer = self._writer()
        if self.progress["finished"]:
            self.writer.close()
            if not self.quiet:
                p, b = self.progress, self.best
                console.print(f"[bold]run already complete[/] ({p['epoch']} epochs, best val mean AUROC "
                              f"{b['value']:.4f} at epoch {b['epoch']}); nothing to do")
            return train_result(self.run_dir, self.best, self.progress, self.history, self.resume)
        self.writer.log({"kind": "start", "step": self.progress["step"], "epoch": self.progress["epoch"] + 1,
                         "resumed": self.resume, "world_size": self.world, "device": str(device),
                         "precision": self.precision, "time": time.time(), **self.adaptation.record()})
        self.bar = ProgressBar(self.quiet, self.total_steps, self.progress["step"])
        self.t_log, self.img_log = time.perf_counter(), 0
        try:
            for epoch in range(self.progress["epoch"], cfg.epochs):
                self._epoch(epoch, on_step, loss_hook)
                if self._end_of_epoch(epoch):
                    break
            if env.is_main:
                best_file = self.run_dir / RUN_BEST_WEIGHTS
                sha = file_sha256(best_file) if best_file.is_file() else ""
                self.writer.finish({"best_val_mean_auroc": self.best["value"],
                                    "best_epoch": self.best["epoch"], "epochs_done": self.progress["epoch"],
                                    "steps": self.progress["step"], "best_weights_sha256": sha})
        finally:
            self.bar.close()
            self.writer.close()
        return train_result(self.run_dir, self.best, self.progress, self.history, self.resume)

    def _writer(self) -> Rank0Writer:
        """The run's log (and tracker); prints the start summary."""
        cfg, env, d = self.cfg, self.env, self.data
        n_params = sum(p.numel() for p in self.model.parameters())
        tracker = None
        if env.is_main and not self.progress["finished"]:
            tracker = open_tracker(cfg.tracker, self.run_dir, project=cfg.tracker_project,
                                   name=cfg.tracker_name, resume=self.resume,
                                   params={**cfg.to_dict(), "arch": self.info.arch, "world_size": self.world,
                                           "num_params": n_params, "findings": d.findings,
                                           "trainable_params": self.adaptation.trainable_params,
                                           "cache_manifest_sha256": d.cache_sha})
        # drops the log lines of redone steps
        writer = Rank0Writer(self.run_dir, env.is_main, resume_step=self.progress["step"], tracker=tracker)
        if not self.quiet:
            print_summary(cfg, env, self.device, self.info, self.image_size, d.train, d.val, self.micro,
                          self.steps_per_epoch, self.total_steps, self.precision, n_params,
                          sum(p.numel() for p in self.trainable), self.groups,
                          forward_gflops(self.model, self.eval_tf, d.train.size, self.device),
                          self.overlap_note, self.progress, self.resume, self.adaptation.describe())
        return writer

    def _epoch(self, epoch: int, on_step: StepHook | None, loss_hook: LossHook | None) -> None:
        """One epoch's micro-steps (from the resumed position) with their optimizer steps."""
        cfg, env, device = self.cfg, self.env, self.device
        self.progress["epoch"] = epoch
        first = self.progress["micro"]
        self.adaptation.set_mode(self.model)
        batches = resume_epoch(self.loader, self.sampler, epoch, first, self.micro, self.rng_state,
                               {"augment": self.aug_gen})
        self.rng_state = None
        self.bar.epoch(epoch, cfg.epochs)
        for m in range(first, self.n_micro):
            images, labels = next(batches)
            group_start = (m // self.accum) * self.accum
            group_len = min(self.accum, self.n_micro - group_start)
            last_micro = m == group_start + group_len - 1
            x = self.train_tf(images.to(device, non_blocking=True), generator=self.aug_gen)
            y = labels.to(device, non_blocking=True)
            fwd: Any = self.fwd
            sync = contextlib.nullcontext() if last_micro or not env.enabled else fwd.no_sync()
            with sync:
                with self.autocast:
                    logits = self.fwd(x)
                lsum, n = masked_bce_sum(logits.float(), y, self.pw)
                if loss_hook is not None:
                    lsum = loss_hook(self.progress["step"], lsum)
                # normalize by the known labels of the global micro-batch; DDP then averages the
                # gradients over ranks, hence the factor world: the result is sum / n_known_global
                n_known = dist_.all_reduce_sum(n.clone(), env) if env.enabled else n
                loss = lsum * (self.world / group_len) / n_known.clamp(min=1.0)
                self.scaler.scale(loss).backward()
            self.loss_sum += lsum.detach()
            self.loss_cnt += n
            self.img_log += images.shape[0] * self.world
            if last_micro:
                self._optimizer_step(epoch, m)
                if on_step is not None:
                    on_step(self.progress["step"], epoch)

    def _optimizer_step(self, epoch: int, m: int) -> None:
        """Step the optimizer after micro-step ``m``; log, and checkpoint every ``checkpoint_every`` steps."""
        cfg = self.cfg
        lr = self.schedule.apply(self.optimizer, self.progress["step"])
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress["step"] += 1
        self.progress["micro"] = m + 1
        step = self.progress["step"]
        end_of_epoch = m + 1 == self.n_micro
        if step % cfg.log_every == 0 or end_of_epoch:
            self._check_finite()
            self.loss_sum = dist_.all_reduce_sum(self.loss_sum, self.env)
            self.loss_cnt = dist_.all_reduce_sum(self.loss_cnt, self.env)
            now = time.perf_counter()
            rec = {"kind": "step", "epoch": epoch + 1, "step": step, "lr": lr,
                   "loss": float(self.loss_sum / self.loss_cnt.clamp(min=1)),
                   "images_per_s": self.img_log / max(now - self.t_log, 1e-9), "time": time.time()}
            self.writer.log(rec)
            self.writer.scalars(step, {"train/loss": rec["loss"], "train/lr": lr,
                                       "train/images_per_s": rec["images_per_s"]})
            self.bar.update(step, rec["loss"], rec["images_per_s"])
            self.loss_sum.zero_()
            self.loss_cnt.zero_()
            self.t_log, self.img_log = now, 0
        else:
            self.bar.update(step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch:
            self._check_finite()
            self._checkpoint()

    def _end_of_epoch(self, epoch: int) -> bool:
        """Validate, select, checkpoint; True when training stops early."""
        cfg, progress, best = self.cfg, self.progress, self.best
        self._check_finite()
        val = self._validate()
        improved = val["mean_auroc"] > best["value"]
        if improved:
            best.update(value=val["mean_auroc"], epoch=epoch + 1, bad_epochs=0)
            if self.env.is_main:
                d = self.data
                save_best(self.run_dir, self.adaptation.best_weights(unwrap(self.model)),
                          best_meta(cfg, self.info, d.findings, self.image_size, d.train, d.cache_sha,
                                    self.head_keys, val, epoch + 1, progress["step"], self.precision,
                                    self.adaptation.record()))
        else:
            best["bad_epochs"] += 1
        progress["stopped_early"] = cfg.patience > 0 and best["bad_epochs"] >= cfg.patience
        rec = {"kind": "epoch", "epoch": epoch + 1, "step": progress["step"],
               "val_mean_auroc": val["mean_auroc"], "val_loss": val["loss"], "val_auroc": val["auroc"],
               "best_epoch": best["epoch"], "improved": improved, "time": time.time()}
        self.history.append({k: rec[k] for k in ("epoch", "step", "val_mean_auroc", "val_loss")})
        self.writer.log(rec)
        self.writer.scalars(progress["step"], {"val/mean_auroc": val["mean_auroc"], "val/loss": val["loss"],
                                               **{f"val/auroc_{f}": v for f, v in val["auroc"].items()}})
        self.writer.flush()
        self.bar.note(f"epoch {epoch + 1}/{cfg.epochs}: val mean AUROC {val['mean_auroc']:.4f}, "
                      f"val loss {val['loss']:.4f}{' (best)' if improved else ''}")
        progress.update(epoch=epoch + 1, micro=0)
        progress["finished"] = progress["stopped_early"] or epoch + 1 == cfg.epochs
        self._checkpoint()
        if progress["stopped_early"]:
            self.bar.note(f"early stop: no improvement for {cfg.patience} epochs; best epoch {best['epoch']}")
        return bool(progress["stopped_early"])

    def _checkpoint(self) -> None:
        """Gather every rank's RNG states and running loss; rank 0 writes last.pt."""
        mine = {"rng": capture_rng({"augment": self.aug_gen}),
                "loss": [float(self.loss_sum), float(self.loss_cnt)]}
        ranks = dist_.all_gather_objects(mine, self.env)
        if self.env.is_main:
            save_last(self.run_dir / LAST, {
                "model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "schedule": self.schedule.state_dict(), "ranks": ranks,
                "progress": dict(self.progress), "best": dict(self.best), "history": self.history,
                "world_size": self.world, "config": self.cfg.identity()})

    def _check_finite(self) -> None:
        """Stop on a NaN/Inf loss before anything derived from it is saved."""
        if dist_.any_flag(not bool(torch.isfinite(self.loss_sum).item()), self.env, self.device):
            last = self.run_dir / LAST
            kept = (f"the last good checkpoint is kept in {last} (resume after changing nothing would "
                    f"diverge again: restart with {spell('--overwrite')})" if last.is_file() else
                    f"no checkpoint was written before it (restart with {spell('--overwrite')})")
            raise TrainingDiverged(
                f"the training loss became NaN/Inf by step {self.progress['step']} "
                f"(epoch {self.progress['epoch'] + 1})",
                where=str(self.run_dir),
                fix=spell("lower --lr, add --clip-grad 1.0 or use --precision bf16/fp32",
                          "lower lr, set clip_grad=1.0 or precision='bf16'/'fp32'") + f"; {kept}")

    @torch.no_grad()
    def _validate(self) -> dict[str, Any]:
        """Mean AUROC over findings with both classes, per-finding AUROC and loss on the val split."""
        from cxrbench.models.forward import predict_dataset

        val_ds, findings = self.data.val, self.data.findings
        was_training = self.model.training
        _, logits = predict_dataset(self.model, val_ds, self.eval_tf, self.device,
                                    batch_size=max(2 * self.micro, 32), env=self.env, autocast=self.autocast,
                                    workers=min(self.cfg.workers, 2))
        self.model.train(was_training)
        y = val_ds.labels
        t_logits, t_y = torch.from_numpy(np.array(logits)), torch.from_numpy(np.array(y))
        loss_sum, n_known = masked_bce_sum(t_logits, t_y, None if self.pw is None else self.pw.cpu())
        mean, per = mean_auroc(y, logits)
        return {"mean_auroc": mean, "auroc": dict(zip(findings, per, strict=True)),
                "loss": float(loss_sum / n_known.clamp(min=1))}
