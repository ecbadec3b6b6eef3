"""The self-distillation loop: one process or torchrun DDP, exact resume, the teacher as the output.

Read top to bottom: :func:`pretrain` sets up the process (device, process group, RNG, determinism)
and :class:`SelfDistillation` is the loop. Per micro-step each process reads ``batch_size / (world_size *
grad_accum)`` images of the selection (:mod:`cxrbench.pretrain.selection`), makes the multi-crop
views and iBOT masks on the device (:mod:`cxrbench.pretrain.crops`), runs the EMA teacher on the
global views and the student on all of them, and backpropagates DINO + iBOT + KoLeo
(:class:`~cxrbench.pretrain.losses.SSLObjective`). After each optimizer step the teacher moves
towards the student with the momentum of the step. Learning rate, weight decay, momentum and teacher
temperature are pure functions of the step (:mod:`cxrbench.pretrain.schedules`).

Output: after every epoch the teacher's backbone is written to ``best.safetensors`` + ``best.json``
(an init for ``cxrbench train --init checkpoint:RUN/best.safetensors``). Resume: ``last.pt`` holds
student, teacher, centers, optimizer, every rank's RNG states and the position in the epoch, so a
killed run continues with the very same views and updates. A NaN/Inf loss stops the run and keeps
the last good checkpoint. Labels are never read.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrbench.common import distributed as dist_
from cxrbench.common.errors import InputError, TrainingDiverged, spell
from cxrbench.common.layout import RUN_PRETRAIN_IMAGES
from cxrbench.pretrain.config import PretrainConfig
from cxrbench.train.checkpoint import (
    LAST,
    capture_rng,
    load_last,
    resume_epoch,
    save_best,
    save_last,
    stream_seed,
)
from cxrbench.train.optim import unwrap
from cxrbench.train.runlog import Rank0Writer

_PARTS = ("loss", "dino", "ibot", "koleo", "entropy")  # running sums logged per step


@dataclass
class PretrainResult:
    """What a finished pretraining run reports; ``init`` is the spelling that fine-tunes from it."""

    run_dir: Path
    epochs_done: int
    steps: int
    final_loss: float
    resumed: bool
    images: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def init(self) -> str:
        from cxrbench.common.layout import RUN_BEST_WEIGHTS

        return f"checkpoint:{self.run_dir / RUN_BEST_WEIGHTS}"


def pretrain(
    cfg: PretrainConfig,
    *,
    overwrite: bool = False,
    quiet: bool = False,
    on_step: Callable[[int, int], None] | None = None,
    loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> PretrainResult:
    """Pretrain (or resume) the run ``cfg.out`` (DINOv2 recipe), as ``cxrbench pretrain``.

    Args:
        cfg: the run's :class:`~cxrbench.pretrain.config.PretrainConfig` (caches, init, out, recipe).
        overwrite: restart an existing run folder (only its own files go); else it is resumed.
        quiet: no console output.
        on_step: ``on_step(step, epoch)`` after every optimizer step.
        loss_hook: ``loss_hook(step, loss)`` may replace a micro-step's loss (tests use both, e.g. to
            inject a NaN).

    Returns:
        :class:`PretrainResult` (on every rank): ``run_dir``, ``epochs_done``, ``steps``,
        ``final_loss``, ``resumed``, ``images`` (how many pretraining images), ``history``; its
        ``init`` (``checkpoint:RUN/best.safetensors``) fine-tunes from the teacher backbone.

    Example::

        result = cxrbench.pretrain(cxrbench.PretrainConfig(caches=["cache/nih-224"], init="dinov2-vitb14",
                                                           out="runs/ssl", epochs=10))
        cxrbench.train(cxrbench.TrainConfig(cache="cache/nih-224", init=result.init, out="runs/ft"))
    """
    env = dist_.detect()
    device = dist_.device_for(env, cfg.device)
    env = dist_.init(device, env)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_benchmark = torch.backends.cudnn.benchmark
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            loop = SelfDistillation(cfg, env, device, overwrite=overwrite, quiet=quiet or not env.is_main)
            return loop.run(on_step, loss_hook)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark
        dist_.destroy(env)


class SelfDistillation:
    """The pretraining loop of one run: set up in the constructor, run by :meth:`run`."""

    def __init__(self, cfg: PretrainConfig, env: dist_.DistEnv, device: torch.device, *, overwrite: bool,
                 quiet: bool) -> None:
        from cxrbench.pretrain.losses import SSLObjective
        from cxrbench.pretrain.model import build_networks
        from cxrbench.pretrain.runfolder import check_run_dir
        from cxrbench.pretrain.selection import PretrainImages, cache_fingerprints, select_images

        self.cfg, self.env, self.device, self.quiet = cfg, env, device, quiet
        self.run_dir = run_dir = Path(cfg.out)
        # -- data: the train splits of the caches, held-out patients removed --------------------------
        self.selection = select_images(cfg.caches, cfg.exclude, cfg.unlabeled)
        self.fingerprints = cache_fingerprints([*cfg.caches, *cfg.unlabeled])
        self.data = PretrainImages(self.selection)
        self.resume = check_run_dir(run_dir, cfg, overwrite, self.fingerprints, self.selection.sha256)
        state = load_last(run_dir / LAST) if self.resume else None
        if state is not None and state["world_size"] != env.world_size:
            n = state["world_size"]
            raise InputError(
                f"the run was trained with {n} process(es), now {env.world_size}",
                where=str(run_dir),
                fix=f"resume with torchrun --nproc_per_node={n} or restart with {spell('--overwrite')}",
            )
        # -- networks -----------------------------------------------------------------------------------
        self.nets = nets = build_networks(cfg, self.data.size)
        self.student, self.teacher = nets.student.to(device), nets.teacher.to(device)
        torch.manual_seed(stream_seed(cfg.seed, env.rank, 1))  # stochastic depth: one stream per rank
        self.objective = SSLObjective(
            cfg.out_dim, 2, cfg.local_crops, cfg.centering, cfg.center_momentum, cfg.sinkhorn_iterations,
            cfg.student_temp, cfg.dino_weight, cfg.ibot_weight, cfg.koleo_weight, ibot=cfg.ibot,
        ).to(device)
        self._optimization()
        self._views()
        self._restore_or_start(state, overwrite)

    def _optimization(self) -> None:
        """Sampler, micro-batches, schedules, parameter groups, optimizer, precision."""
        from cxrbench.data.loader import ResumableSampler
        from cxrbench.pretrain.model import param_groups, prototype_parameters
        from cxrbench.pretrain.schedules import SSLSchedules

        cfg, env, device = self.cfg, self.env, self.device
        self.world, self.accum = env.world_size, cfg.grad_accum
        self.micro = cfg.micro_batch(self.world)
        self.sampler = ResumableSampler(len(self.data), shuffle=True, seed=cfg.seed, rank=env.rank,
                                        world_size=self.world)
        # whole optimizer steps of full batches
        self.n_micro = (self.sampler.num_samples // self.micro // self.accum) * self.accum
        if self.n_micro == 0:
            raise InputError(
                f"{len(self.data)} images are fewer than one batch of {cfg.batch_size}",
                where=", ".join(self.selection.caches),
                fix=f"lower {spell('--batch-size', 'batch_size')} or add images",
            )
        self.steps_per_epoch = self.n_micro // self.accum
        self.sched = SSLSchedules.from_config(cfg, self.steps_per_epoch)
        groups = param_groups(self.student, cfg.layer_decay)
        self.trainable = [p for g in groups for p in g["params"]]
        self.prototypes = prototype_parameters(self.student)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0,
                                           fused=device.type == "cuda")
        auto = "bf16" if device.type == "cuda" else "fp32"
        precision = cfg.precision if cfg.precision != "auto" else auto
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError("this GPU has no bf16 support", where=spell("--precision"),
                             fix=spell("use --precision fp32", "use precision='fp32'"))
        self.precision = precision
        self.amp = torch.bfloat16 if precision == "bf16" else None

    def _views(self) -> None:
        """The multi-crop views and iBOT's patch grid, drawn on the device from their own generator."""
        from cxrbench.pretrain.crops import MultiCrop

        cfg, nets = self.cfg, self.nets
        self.crops = MultiCrop(
            nets.info.mean, nets.info.std, nets.global_size, nets.local_size, 2, cfg.local_crops,
            cfg.global_scale, cfg.local_scale, hflip=cfg.hflip, rotate=cfg.rotate, brightness=cfg.brightness,
            contrast=cfg.contrast, blur=cfg.blur, blur_sigma=cfg.blur_sigma,
        ).to(self.device)
        self.grid = self.student.grid(nets.global_size) if self.student.vit else None
        self.aug_gen = torch.Generator(device=self.device)
        self.aug_gen.manual_seed(stream_seed(cfg.seed, self.env.rank, 2))

    def _restore_or_start(self, state: dict[str, Any] | None, overwrite: bool) -> None:
        """Restore the checkpoint, or write the run's config and image list."""
        from cxrbench.pretrain.runfolder import start_run_dir, write_run_config
        from cxrbench.pretrain.selection import write_selection

        self.progress: dict[str, Any] = {"epoch": 0, "micro": 0, "step": 0, "finished": False}
        self.history: list[dict[str, Any]] = []
        self.rng_state, running, epoch_running = None, None, None
        if state is not None:
            unwrap(self.student).load_state_dict(state["student"])
            self.teacher.load_state_dict(state["teacher"])
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state["schedule"] != self.sched.state_dict():
                raise InputError(
                    "the checkpoint's schedules differ from this config's",
                    where=str(self.run_dir / LAST),
                    fix=f"resume with the same data and options, or restart with {spell('--overwrite')}",
                )
            self.progress, self.history = dict(state["progress"]), list(state["history"])
            self.rng_state = state["ranks"][self.env.rank]["rng"]
            running = state["ranks"][self.env.rank]["running"]
            epoch_running = state["ranks"][self.env.rank]["epoch"]
        elif self.env.is_main:
            start_run_dir(self.run_dir, overwrite)
            write_selection(self.selection, self.run_dir / RUN_PRETRAIN_IMAGES)
            write_run_config(
                self.run_dir, self.cfg, self.env, self.selection, self.fingerprints, self.data.recipes,
                self.nets,
                dict(micro_batch=self.micro, steps_per_epoch=self.steps_per_epoch,
                     total_steps=self.sched.total_steps, warmup_steps=self.sched.warmup_steps,
                     precision=self.precision, grid=list(self.grid) if self.grid else None),
            )
        # the parts' running sums, then the micro-step count; this epoch's loss sum and micro-step count
        self.sums = torch.tensor(running if running is not None else [0.0] * (len(_PARTS) + 1),
                                 device=self.device, dtype=torch.float64)
        self.epoch_running = epoch_running
        dist_.barrier(self.env)

    # -- the run ---------------------------------------------------------------------------------------

    def run(self, on_step: Callable[[int, int], None] | None = None,
            loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> PretrainResult:
        """Pretrain to the last epoch from where the run stands; returns its summary."""
        from cxrbench.data.loader import make_loader
        from cxrbench.pretrain.console import print_summary
        from cxrbench.train.console import ProgressBar

        cfg, env, device, progress = self.cfg, self.env, self.device, self.progress
        fwd: nn.Module = self.student
        if env.enabled:
            fwd = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.fwd = fwd
        self.autocast = torch.autocast(device.type, dtype=self.amp or torch.float32,
                                       enabled=self.amp is not None)
        self.loader = make_loader(self.data, self.micro, sampler=self.sampler, num_workers=cfg.workers,
                                  drop_last=True, pin_memory=device.type == "cuda")
        self.writer = Rank0Writer(self.run_dir, env.is_main, resume_step=progress["step"])
        if not self.quiet:
            print_summary(cfg, env, device, self.nets, self.selection, self.micro, self.steps_per_epoch,
                          self.sched, self.precision, progress, self.resume)
        if progress["finished"]:
            self.writer.close()
            if not self.quiet:
                from cxrbench.common.progress import console

                console.print(f"[bold]run already complete[/] ({progress['epoch']} epochs); nothing to do")
            return _result(self.run_dir, progress, self.history, self.resume, len(self.data))
        self.writer.log({"kind": "start", "step": progress["step"], "epoch": progress["epoch"] + 1,
                         "resumed": self.resume, "world_size": self.world, "device": str(device),
                         "precision": self.precision, "images": len(self.data), "time": time.time()})
        self.bar = ProgressBar(self.quiet, self.sched.total_steps, progress["step"])
        self.t_log, self.img_log = time.perf_counter(), 0
        self.epoch_sums = torch.tensor(self.epoch_running or [0.0, 0.0], device=device, dtype=torch.float64)
        try:
            for epoch in range(progress["epoch"], cfg.epochs):
                self._epoch(epoch, on_step, loss_hook)
                self._end_of_epoch(epoch)
        finally:
            self.bar.close()
            self.writer.close()
        return _result(self.run_dir, progress, self.history, self.resume, len(self.data))

    def _epoch(self, epoch: int, on_step: Callable[[int, int], None] | None,
               loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None) -> None:
        """One epoch's micro-steps (from the resumed position) with their optimizer steps."""
        from cxrbench.pretrain.crops import sample_masks

        cfg, env, device, progress = self.cfg, self.env, self.device, self.progress
        progress["epoch"] = epoch
        first = progress["micro"]
        self.student.train()
        # the global RNG also drives stochastic depth: restored with the loader's draw in mind
        batches = resume_epoch(self.loader, self.sampler, epoch, first, self.micro, self.rng_state,
                               {"augment": self.aug_gen})
        self.rng_state = None
        self.bar.epoch(epoch, cfg.epochs)
        for m in range(first, self.n_micro):
            images = next(batches).to(device, non_blocking=True)
            step = progress["step"]
            last_micro = (m + 1) % self.accum == 0
            with torch.no_grad():
                g_views, l_views = self.crops(images, generator=self.aug_gen)
                masks = (sample_masks(g_views.shape[0], self.grid, self.aug_gen, device, cfg.mask_probability,
                                      cfg.mask_ratio) if cfg.ibot else None)
            fwd: Any = self.fwd
            sync = contextlib.nullcontext() if last_micro or not env.enabled else fwd.no_sync()
            with sync:
                with self.autocast:
                    t_logits, t_patch = self.teacher.teacher(g_views, masks)
                    out = fwd(g_views, l_views, masks)
                parts = self.objective({k: v.float() for k, v in out.items()}, t_logits.float(),
                                       None if t_patch is None else t_patch.float(), masks,
                                       self.sched.temp(step), env)
                loss = parts["loss"] if loss_hook is None else loss_hook(step, parts["loss"])
                (loss / self.accum).backward()
            with torch.no_grad():
                one = torch.ones((), device=device, dtype=torch.float64)
                self.sums += torch.stack([loss.detach().double(), *(parts[k].double() for k in _PARTS[1:]),
                                          one])
                self.epoch_sums += torch.stack([loss.detach().double(), one])
            self.img_log += images.shape[0] * self.world
            if last_micro:
                self._optimizer_step(epoch, m)
                if on_step is not None:
                    on_step(progress["step"], epoch)

    def _optimizer_step(self, epoch: int, m: int) -> None:
        """Step the student after micro-step ``m``, move the teacher, log, checkpoint when due."""
        from cxrbench.pretrain.heads import ema_update

        cfg, sched, progress = self.cfg, self.sched, self.progress
        step = progress["step"]
        lr = sched.lr_schedule.apply(self.optimizer, step)
        wd = sched.wd(step)
        for g in self.optimizer.param_groups:
            g["weight_decay"] = wd * g["wd_scale"]
        if cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad)
        if sched.prototypes_frozen(step):
            for p in self.prototypes:
                p.grad = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        momentum = sched.teacher_momentum(step)
        ema_update(self.teacher, unwrap(self.student), momentum)
        progress["step"] = step = step + 1
        progress["micro"] = m + 1
        end_of_epoch = m + 1 == self.n_micro
        if step % cfg.log_every == 0 or end_of_epoch:
            self._check_finite()
            now = time.perf_counter()
            rec = {"kind": "step", "epoch": epoch + 1, "step": step, **self._reduced(), "lr": lr, "wd": wd,
                   "momentum": momentum, "teacher_temp": sched.temp(step - 1),
                   "images_per_s": self.img_log / max(now - self.t_log, 1e-9), "time": time.time()}
            self.writer.log(rec)
            self.writer.scalars(step, {f"pretrain/{k}": rec[k] for k in (*_PARTS, "lr", "wd", "momentum",
                                                                          "teacher_temp", "images_per_s")})
            self.bar.update(step, rec["loss"], rec["images_per_s"])
            self.sums.zero_()
            self.t_log, self.img_log = now, 0
        else:
            self.bar.update(step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch:
            self._check_finite()
            self._checkpoint()

    def _end_of_epoch(self, epoch: int) -> None:
        """The teacher becomes the run's output; log, checkpoint."""
        from cxrbench.pretrain.runfolder import best_meta
        from cxrbench.train.checkpoint import state_dict_cpu

        cfg, progress = self.cfg, self.progress
        self._check_finite()
        total = dist_.all_reduce_sum(self.epoch_sums.clone(), self.env)
        mean_loss = float(total[0] / total[1].clamp(min=1.0))
        self.epoch_sums.zero_()
        if self.env.is_main:
            save_best(self.run_dir, state_dict_cpu(self.teacher.backbone),
                      best_meta(cfg, self.nets, self.selection, self.data.recipes, epoch + 1,
                                progress["step"], self.precision, mean_loss))
        rec = {"kind": "epoch", "epoch": epoch + 1, "step": progress["step"], "loss": mean_loss,
               "time": time.time()}
        self.history.append({k: rec[k] for k in ("epoch", "step", "loss")})
        self.writer.log(rec)
        self.writer.scalars(progress["step"], {"pretrain/epoch_loss": mean_loss})
        self.writer.flush()
        self.bar.note(f"epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}; teacher saved")
        progress.update(epoch=epoch + 1, micro=0, finished=epoch + 1 == cfg.epochs)
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Gather every rank's RNG states and running sums; rank 0 writes last.pt."""
        mine = {"rng": capture_rng({"augment": self.aug_gen}), "running": self.sums.tolist(),
                "epoch": self.epoch_sums.tolist()}
        ranks = dist_.all_gather_objects(mine, self.env)
        if self.env.is_main:
            save_last(self.run_dir / LAST, {
                "student": unwrap(self.student).state_dict(), "teacher": self.teacher.state_dict(),
                "objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.sched.state_dict(), "ranks": ranks, "progress": dict(self.progress),
                "history": self.history, "world_size": self.world, "config": self.cfg.identity()})

    def _check_finite(self) -> None:
        """Stop on a NaN/Inf loss before anything derived from it is saved."""
        if dist_.any_flag(not bool(torch.isfinite(self.sums).all().item()), self.env, self.device):
            raise TrainingDiverged(
                f"the pretraining loss became NaN/Inf by step {self.progress['step']} "
                f"(epoch {self.progress['epoch'] + 1})",
                where=str(self.run_dir),
                fix=spell("lower --lr, lower --clip-grad or use --precision fp32",
                          "lower lr, lower clip_grad or use precision='fp32'") + "; the last "
                f"good checkpoint is kept in {self.run_dir / LAST} (restart with "
                f"{spell('--overwrite')})",
            )

    def _reduced(self) -> dict[str, float]:
        total = dist_.all_reduce_sum(self.sums.clone(), self.env)
        n = max(float(total[-1]), 1.0)
        return {k: float(total[i]) / n for i, k in enumerate(_PARTS)}


def _result(run_dir, progress, history, resumed, n_images) -> PretrainResult:
    return PretrainResult(
        run_dir=run_dir,
        epochs_done=int(progress["epoch"]),
        steps=int(progress["step"]),
        final_loss=float(history[-1]["loss"]) if history else math.nan,
        resumed=resumed,
        images=n_images,
        history=history,
    )
