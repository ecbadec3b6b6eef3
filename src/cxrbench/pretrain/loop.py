"""The self-distillation loop: one process or torchrun DDP, exact resume, the teacher as the output.

Read top to bottom: :func:`pretrain` sets up the process (device, process group, RNG, determinism)
and :func:`_run` is the loop. Per micro-step each process reads ``batch_size / (world_size *
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

import numpy as np
import torch
from torch import nn

from cxrbench.common import distributed as dist_
from cxrbench.common.errors import InputError, TrainingDiverged
from cxrbench.common.layout import RUN_PRETRAIN_IMAGES
from cxrbench.pretrain.config import PretrainConfig
from cxrbench.train.checkpoint import LAST, capture_rng, load_last, resume_epoch, save_best, save_last
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
    """Pretrain (or resume) the run ``cfg.out``; returns its summary (on every rank).

    ``on_step(step, epoch)`` is called after every optimizer step; ``loss_hook(step, loss)`` may
    replace a micro-step's loss (tests use both, e.g. to inject a NaN).
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
            return _run(
                cfg,
                env,
                device,
                overwrite=overwrite,
                quiet=quiet or not env.is_main,
                on_step=on_step,
                loss_hook=loss_hook,
            )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.backends.cudnn.benchmark = was_benchmark
        dist_.destroy(env)


def _seed(seed: int, *key: int) -> int:
    return int(np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def _run(
    cfg: PretrainConfig,
    env: dist_.DistEnv,
    device: torch.device,
    *,
    overwrite: bool,
    quiet: bool,
    on_step,
    loss_hook,
) -> PretrainResult:
    from cxrbench.data.loader import ResumableSampler, make_loader
    from cxrbench.pretrain.console import print_summary
    from cxrbench.pretrain.crops import MultiCrop, sample_masks
    from cxrbench.pretrain.heads import ema_update
    from cxrbench.pretrain.losses import SSLObjective
    from cxrbench.pretrain.model import build_networks, param_groups, prototype_parameters
    from cxrbench.pretrain.runfolder import best_meta, check_run_dir, start_run_dir, write_run_config
    from cxrbench.pretrain.schedules import SSLSchedules
    from cxrbench.pretrain.selection import PretrainImages, cache_fingerprints, select_images, write_selection
    from cxrbench.train.checkpoint import state_dict_cpu
    from cxrbench.train.console import ProgressBar

    run_dir = Path(cfg.out)
    # -- data: the train splits of the caches, held-out patients removed --------------------------
    selection = select_images(cfg.caches, cfg.exclude, cfg.unlabeled)
    fingerprints = cache_fingerprints([*cfg.caches, *cfg.unlabeled])
    data = PretrainImages(selection)
    resume = check_run_dir(run_dir, cfg, overwrite, fingerprints, selection.sha256)
    state = load_last(run_dir / LAST) if resume else None
    if state is not None and state["world_size"] != env.world_size:
        n = state["world_size"]
        raise InputError(
            f"the run was trained with {n} process(es), now {env.world_size}",
            where=str(run_dir),
            fix=f"resume with torchrun --nproc_per_node={n} or restart with --overwrite",
        )

    # -- networks -----------------------------------------------------------------------------------
    nets = build_networks(cfg, data.size)
    student, teacher = nets.student.to(device), nets.teacher.to(device)
    torch.manual_seed(_seed(cfg.seed, env.rank, 1))  # stochastic depth: one stream per rank
    objective = SSLObjective(
        cfg.out_dim,
        2,
        cfg.local_crops,
        cfg.centering,
        cfg.center_momentum,
        cfg.sinkhorn_iterations,
        cfg.student_temp,
        cfg.dino_weight,
        cfg.ibot_weight,
        cfg.koleo_weight,
        ibot=cfg.ibot,
    ).to(device)

    # -- optimization -------------------------------------------------------------------------------
    world, accum = env.world_size, cfg.grad_accum
    micro = cfg.micro_batch(world)
    sampler = ResumableSampler(len(data), shuffle=True, seed=cfg.seed, rank=env.rank, world_size=world)
    n_micro = (sampler.num_samples // micro // accum) * accum  # whole optimizer steps of full batches
    if n_micro == 0:
        raise InputError(
            f"{len(data)} images are fewer than one batch of {cfg.batch_size}",
            where=", ".join(selection.caches),
            fix="lower --batch-size or add images",
        )
    steps_per_epoch = n_micro // accum
    sched = SSLSchedules.from_config(cfg, steps_per_epoch)
    lr_sched = sched.lr_schedule
    groups = param_groups(student, cfg.layer_decay)
    trainable = [p for g in groups for p in g["params"]]
    prototypes = prototype_parameters(student)
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0, fused=device.type == "cuda"
    )
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU has no bf16 support", where="--precision", fix="use --precision fp32")
    amp = torch.bfloat16 if precision == "bf16" else None
    crops = MultiCrop(
        nets.info.mean,
        nets.info.std,
        nets.global_size,
        nets.local_size,
        2,
        cfg.local_crops,
        cfg.global_scale,
        cfg.local_scale,
        hflip=cfg.hflip,
        rotate=cfg.rotate,
        brightness=cfg.brightness,
        contrast=cfg.contrast,
        blur=cfg.blur,
        blur_sigma=cfg.blur_sigma,
    ).to(device)
    grid = student.grid(nets.global_size) if student.vit else None
    aug_gen = torch.Generator(device=device)
    aug_gen.manual_seed(_seed(cfg.seed, env.rank, 2))

    # -- restore, or write the run's config and image list ------------------------------------------
    progress = {"epoch": 0, "micro": 0, "step": 0, "finished": False}
    history: list[dict[str, Any]] = []
    rng_state, running, epoch_running = None, None, None
    if state is not None:
        unwrap(student).load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        if state["schedule"] != sched.state_dict():
            raise InputError(
                "the checkpoint's schedules differ from this config's",
                where=str(run_dir / LAST),
                fix="resume with the same data and options, or restart with --overwrite",
            )
        progress, history = dict(state["progress"]), list(state["history"])
        rng_state = state["ranks"][env.rank]["rng"]
        running = state["ranks"][env.rank]["running"]
        epoch_running = state["ranks"][env.rank]["epoch"]
        del state
    elif env.is_main:
        start_run_dir(run_dir, overwrite)
        write_selection(selection, run_dir / RUN_PRETRAIN_IMAGES)
        write_run_config(
            run_dir,
            cfg,
            env,
            selection,
            fingerprints,
            data.recipes,
            nets,
            dict(
                micro_batch=micro,
                steps_per_epoch=steps_per_epoch,
                total_steps=sched.total_steps,
                warmup_steps=sched.warmup_steps,
                precision=precision,
                grid=list(grid) if grid else None,
            ),
        )
    dist_.barrier(env)

    fwd: nn.Module = student
    if env.enabled:
        fwd = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)
    loader = make_loader(
        data,
        micro,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    writer = Rank0Writer(run_dir, env.is_main, resume_step=progress["step"])
    if not quiet:
        print_summary(
            cfg, env, device, nets, selection, micro, steps_per_epoch, sched, precision, progress, resume
        )
    if progress["finished"]:
        writer.close()
        if not quiet:
            from cxrbench.common.progress import console

            console.print(f"[bold]run already complete[/] ({progress['epoch']} epochs); nothing to do")
        return _result(run_dir, progress, history, resume, len(data))

    writer.log(
        {
            "kind": "start",
            "step": progress["step"],
            "epoch": progress["epoch"] + 1,
            "resumed": resume,
            "world_size": world,
            "device": str(device),
            "precision": precision,
            "images": len(data),
            "time": time.time(),
        }
    )
    sums = torch.tensor(
        running if running is not None else [0.0] * (len(_PARTS) + 1), device=device, dtype=torch.float64
    )  # the parts' running sums, then the micro-step count

    def checkpoint() -> None:
        """Gather every rank's RNG states and running sums; rank 0 writes last.pt."""
        mine = {
            "rng": capture_rng({"augment": aug_gen}),
            "running": sums.tolist(),
            "epoch": epoch_sums.tolist(),
        }
        ranks = dist_.all_gather_objects(mine, env)
        if env.is_main:
            save_last(
                run_dir / LAST,
                {
                    "student": unwrap(student).state_dict(),
                    "teacher": teacher.state_dict(),
                    "objective": objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": sched.state_dict(),
                    "ranks": ranks,
                    "progress": dict(progress),
                    "history": history,
                    "world_size": world,
                    "config": cfg.identity(),
                },
            )

    def check_finite() -> None:
        """Stop on a NaN/Inf loss before anything derived from it is saved."""
        if dist_.any_flag(not bool(torch.isfinite(sums).all().item()), env, device):
            raise TrainingDiverged(
                f"the pretraining loss became NaN/Inf by step {progress['step']} "
                f"(epoch {progress['epoch'] + 1})",
                where=str(run_dir),
                fix="lower --lr, lower --clip-grad or use --precision fp32; the last "
                f"good checkpoint is kept in {run_dir / LAST} (restart with --overwrite)",
            )

    def reduced() -> dict[str, float]:
        total = dist_.all_reduce_sum(sums.clone(), env)
        n = max(float(total[-1]), 1.0)
        return {k: float(total[i]) / n for i, k in enumerate(_PARTS)}

    bar = ProgressBar(quiet, sched.total_steps, progress["step"])
    t_log, img_log = time.perf_counter(), 0
    epoch_sums = torch.tensor(
        epoch_running or [0.0, 0.0], device=device, dtype=torch.float64
    )  # this epoch's loss sum and micro-step count
    try:
        for epoch in range(progress["epoch"], cfg.epochs):
            progress["epoch"] = epoch
            first = progress["micro"]
            student.train()
            # the global RNG also drives stochastic depth: restored with the loader's draw in mind
            batches = resume_epoch(loader, sampler, epoch, first, micro, rng_state, {"augment": aug_gen})
            rng_state = None
            bar.epoch(epoch, cfg.epochs)
            for m in range(first, n_micro):
                images = next(batches).to(device, non_blocking=True)
                step = progress["step"]
                last_micro = (m + 1) % accum == 0
                with torch.no_grad():
                    g_views, l_views = crops(images, generator=aug_gen)
                    masks = (
                        sample_masks(
                            g_views.shape[0], grid, aug_gen, device, cfg.mask_probability, cfg.mask_ratio
                        )
                        if cfg.ibot
                        else None
                    )
                sync = contextlib.nullcontext() if last_micro or not env.enabled else fwd.no_sync()
                with sync:
                    with autocast:
                        t_logits, t_patch = teacher.teacher(g_views, masks)
                        out = fwd(g_views, l_views, masks)
                    parts = objective(
                        {k: v.float() for k, v in out.items()},
                        t_logits.float(),
                        None if t_patch is None else t_patch.float(),
                        masks,
                        sched.temp(step),
                        env,
                    )
                    loss = parts["loss"] if loss_hook is None else loss_hook(step, parts["loss"])
                    (loss / accum).backward()
                with torch.no_grad():
                    sums += torch.stack(
                        [
                            loss.detach().double(),
                            *(parts[k].double() for k in _PARTS[1:]),
                            torch.ones((), device=device, dtype=torch.float64),
                        ]
                    )
                    epoch_sums += torch.stack(
                        [loss.detach().double(), torch.ones((), device=device, dtype=torch.float64)]
                    )
                img_log += images.shape[0] * world
                if not last_micro:
                    continue

                # -- optimizer step, then the teacher -------------------------------------------------
                lr = lr_sched.apply(optimizer, step)
                wd = sched.wd(step)
                for g in optimizer.param_groups:
                    g["weight_decay"] = wd * g["wd_scale"]
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
                if sched.prototypes_frozen(step):
                    for p in prototypes:
                        p.grad = None
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                momentum = sched.teacher_momentum(step)
                ema_update(teacher, unwrap(student), momentum)
                progress["step"] = step = step + 1
                progress["micro"] = m + 1
                end_of_epoch = m + 1 == n_micro

                if step % cfg.log_every == 0 or end_of_epoch:
                    check_finite()
                    now = time.perf_counter()
                    rec = {
                        "kind": "step",
                        "epoch": epoch + 1,
                        "step": step,
                        **reduced(),
                        "lr": lr,
                        "wd": wd,
                        "momentum": momentum,
                        "teacher_temp": sched.temp(step - 1),
                        "images_per_s": img_log / max(now - t_log, 1e-9),
                        "time": time.time(),
                    }
                    writer.log(rec)
                    writer.scalars(
                        step,
                        {
                            f"pretrain/{k}": rec[k]
                            for k in (*_PARTS, "lr", "wd", "momentum", "teacher_temp", "images_per_s")
                        },
                    )
                    bar.update(step, rec["loss"], rec["images_per_s"])
                    sums.zero_()
                    t_log, img_log = now, 0
                else:
                    bar.update(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not end_of_epoch:
                    check_finite()
                    checkpoint()
                if on_step is not None:
                    on_step(step, epoch)

            # -- end of epoch: the teacher becomes the run's output -----------------------------------
            check_finite()
            total = dist_.all_reduce_sum(epoch_sums.clone(), env)
            mean_loss = float(total[0] / total[1].clamp(min=1.0))
            epoch_sums.zero_()
            if env.is_main:
                save_best(
                    run_dir,
                    state_dict_cpu(teacher.backbone),
                    best_meta(
                        cfg, nets, selection, data.recipes, epoch + 1, progress["step"], precision, mean_loss
                    ),
                )
            rec = {
                "kind": "epoch",
                "epoch": epoch + 1,
                "step": progress["step"],
                "loss": mean_loss,
                "time": time.time(),
            }
            history.append({k: rec[k] for k in ("epoch", "step", "loss")})
            writer.log(rec)
            writer.scalars(progress["step"], {"pretrain/epoch_loss": mean_loss})
            writer.flush()
            bar.note(f"epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}; teacher saved")
            progress.update(epoch=epoch + 1, micro=0, finished=epoch + 1 == cfg.epochs)
            checkpoint()
    finally:
        bar.close()
        writer.close()
    return _result(run_dir, progress, history, resume, len(data))


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
