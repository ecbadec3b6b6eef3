"""``linear``: a linear head fitted on cached frozen embeddings, the linear probe without the backbone pass.

The fit is the fine-tuning loop's linear probe step for step, only on features computed once
instead of images sent through the frozen backbone at every step: the same head initialization
(drawn from the seed by ``create_model``), the same sampler order (:class:`ResumableSampler` with
the run's seed), micro-batches and accumulation, masked BCE with ``pos_weight``, AdamW parameter
groups, learning-rate schedule, clipping, validation mean AUROC after every epoch, best-epoch
selection and early stopping. With ``augment`` off the two give the same head up to float rounding
(tested), so the probe's result costs one embedding pass instead of ``epochs`` backbone passes.
Augmentation cannot apply to fixed embeddings: ``augment``, ``hflip`` and ``rotate`` are ignored here.
The head is saved with the backbone as the whole model, so a linear run scores, predicts and exports
as any run of its network.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cxrbench.common.errors import TrainingDiverged, spell
from cxrbench.stats.metrics import mean_auroc
from cxrbench.train.methods.base import EmbeddingFit, EmbeddingTask, Method, Regime
from cxrbench.train.settings import TrainSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxrbench.train.optim import LRSchedule


@dataclass
class LinearFit:
    """What the fit returns: the best head's state dict (CPU), best/progress state and history."""

    head_state: dict[str, torch.Tensor]
    best: dict[str, Any]
    progress: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    val: dict[str, Any] = field(default_factory=dict)
    derived: dict[str, Any] = field(default_factory=dict)


def schedule_for(cfg: TrainSettings, n_train: int) -> tuple[int, int, int, LRSchedule]:
    """``(micro-batch, micro-batches per epoch, steps per epoch, schedule)`` of one process, as the loop."""
    from cxrbench.train.optim import LRSchedule

    micro = cfg.micro_batch(1)
    n_micro = math.ceil(n_train / micro)
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return micro, n_micro, steps_per_epoch, LRSchedule(cfg.lr, total, warmup, cfg.schedule, cfg.min_lr)


def validate(head: nn.Module, x: torch.Tensor, y: np.ndarray, findings: list[str],
             pw: torch.Tensor | None) -> dict[str, Any]:
    """The loop's validation figures (mean AUROC over findings with both classes, per finding, loss)."""
    import torch

    from cxrbench.train.loss import masked_bce_sum

    with torch.no_grad():
        logits = head(x).float()
        t_y = torch.tensor(y, device=logits.device)
        lsum, n = masked_bce_sum(logits, t_y, pw)
    mean, per = mean_auroc(y, logits.cpu().numpy())
    return {"mean_auroc": mean, "auroc": dict(zip(findings, per, strict=True)),
            "loss": float(lsum / n.clamp(min=1))}


def fit_linear_head(cfg: TrainSettings, model: nn.Module, head: nn.Module, train_x: np.ndarray,
                    train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, findings: list[str],
                    pos_weight: np.ndarray, device: torch.device, writer, bar) -> LinearFit:
    """Fit ``head`` (the model's classifier, the only trainable part) on embeddings ``[N, D]``.

    ``writer`` (a :class:`cxrbench.train.runlog.Rank0Writer`) gets the loop's ``step`` and ``epoch``
    records; ``bar`` the progress (:class:`cxrbench.train.console.ProgressBar`).
    """
    import torch

    from cxrbench.data.loader import ResumableBatchSampler, ResumableSampler
    from cxrbench.train.loss import masked_bce_sum
    from cxrbench.train.optim import param_groups

    model.requires_grad_(False)
    head.requires_grad_(True)
    head.train()
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    trainable = [p for p in head.parameters() if p.requires_grad]
    micro, n_micro, steps_per_epoch, schedule = schedule_for(cfg, len(train_x))
    accum = cfg.grad_accum
    sampler = ResumableSampler(len(train_x), shuffle=True, seed=cfg.seed)
    batches = ResumableBatchSampler(sampler, micro, False)
    x, y = torch.tensor(train_x, device=device), torch.tensor(train_y, device=device)  # copies: arrays may be
    xv = torch.tensor(val_x, device=device)  # read-only views of the stored embeddings
    pw = torch.as_tensor(pos_weight, device=device) if cfg.pos_weight else None
    best: dict[str, Any] = {"value": -math.inf, "epoch": -1, "bad_epochs": 0}
    progress: dict[str, Any] = {"epoch": 0, "micro": 0, "step": 0, "finished": False, "stopped_early": False}
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] = {}
    best_val: dict[str, Any] = {}
    loss_sum, loss_cnt, t_log, img_log = 0.0, 0.0, time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        progress["epoch"] = epoch
        sampler.set_epoch(epoch)
        bar.epoch(epoch, cfg.epochs)
        for m, idx in enumerate(batches):
            group_start = (m // accum) * accum
            group_len = min(accum, n_micro - group_start)
            idx_t = torch.as_tensor(idx, device=device)
            lsum, n = masked_bce_sum(head(x[idx_t]).float(), y[idx_t], pw)
            (lsum * (1.0 / group_len) / n.clamp(min=1.0)).backward()
            loss_sum += float(lsum.detach())
            loss_cnt += float(n)
            img_log += len(idx)
            if m != group_start + group_len - 1:
                continue
            lr = schedule.apply(optimizer, progress["step"])
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress["step"] += 1
            step = progress["step"]
            if step % cfg.log_every == 0 or m + 1 == n_micro:
                if not math.isfinite(loss_sum):
                    raise TrainingDiverged(f"the training loss became NaN/Inf by step {step}",
                                           where=str(cfg.out),
                                           fix=spell("lower --lr or add --clip-grad 1.0",
                                                     "lower lr or set clip_grad=1.0"))
                now = time.perf_counter()
                rec = {"kind": "step", "epoch": epoch + 1, "step": step, "lr": lr,
                       "loss": loss_sum / max(loss_cnt, 1.0),
                       "images_per_s": img_log / max(now - t_log, 1e-9), "time": time.time()}
                writer.log(rec)
                writer.scalars(step, {"train/loss": rec["loss"], "train/lr": lr})
                bar.update(step, rec["loss"], rec["images_per_s"])
                loss_sum, loss_cnt, t_log, img_log = 0.0, 0.0, now, 0
            else:
                bar.update(step)
        head.eval()
        val = validate(head, xv, val_y, findings, pw)
        head.train()
        improved = val["mean_auroc"] > best["value"]
        if improved:
            best.update(value=val["mean_auroc"], epoch=epoch + 1, bad_epochs=0)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in head.state_dict().items()}
            best_val = val
        else:
            best["bad_epochs"] += 1
        progress["stopped_early"] = cfg.patience > 0 and best["bad_epochs"] >= cfg.patience
        rec = {"kind": "epoch", "epoch": epoch + 1, "step": progress["step"],
               "val_mean_auroc": val["mean_auroc"], "val_loss": val["loss"], "val_auroc": val["auroc"],
               "best_epoch": best["epoch"],
               "improved": improved, "time": time.time()}
        history.append({k: rec[k] for k in ("epoch", "step", "val_mean_auroc", "val_loss")})
        writer.log(rec)
        writer.scalars(progress["step"], {"val/mean_auroc": val["mean_auroc"], "val/loss": val["loss"]})
        bar.note(f"epoch {epoch + 1}/{cfg.epochs}: val mean AUROC {val['mean_auroc']:.4f}, "
                 f"val loss {val['loss']:.4f}{' (best)' if improved else ''}")
        progress.update(epoch=epoch + 1, micro=0)
        if progress["stopped_early"]:
            bar.note(f"early stop: no improvement for {cfg.patience} epochs; best epoch {best['epoch']}")
            break
    progress["finished"] = True
    derived = {"micro_batch": micro, "steps_per_epoch": steps_per_epoch, "total_steps": schedule.total_steps,
               "warmup_steps": schedule.warmup_steps}
    return LinearFit(best_state, best, progress, history, best_val, derived)


class LinearProbe(Method):
    name: ClassVar[str] = "linear"
    summary: ClassVar[str] = "a linear head on the frozen backbone's embeddings, computed once and cached " \
                             "in CACHE/embeddings/ (no augmentation)"
    regime: ClassVar[Regime] = "embeddings"

    def check_model(self, model: nn.Module, sample: torch.Tensor) -> None:
        from cxrbench.adapt.features import check_linear_head

        check_linear_head(model, sample)

    def describe(self, cfg: TrainSettings, trainable: int, total: int) -> str:
        return (f"linear head on cached embeddings (no augmentation), AdamW lr {cfg.lr:g}, batch "
                f"{cfg.batch_size}, up to {cfg.epochs} epochs: {trainable:,} of {total:,} parameters "
                "trainable")

    def fit(self, task: EmbeddingTask) -> EmbeddingFit:
        from cxrbench.train.checkpoint import state_dict_cpu

        bar = task.make_bar(schedule_for(task.cfg, len(task.train_x))[3].total_steps)
        try:
            fit = fit_linear_head(task.cfg, task.model, task.head, task.train_x, task.train_y, task.val_x,
                                  task.val_y, task.findings, task.pos_weight, task.device, task.writer, bar)
        finally:
            bar.close()
        task.head.load_state_dict(fit.head_state)
        return EmbeddingFit(state_dict_cpu(task.model), task.head_keys, fit.best, fit.progress, fit.history,
                            fit.val, {"linear": {"on": "cached embeddings", "augment": False, **fit.derived}})

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        return "linear probing (a linear head on frozen-backbone embeddings computed once and cached)"


METHOD = LinearProbe()
