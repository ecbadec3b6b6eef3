"""Every schedule of self-distillation as a pure function of the optimizer step (nothing to restore
on resume but the step): learning rate (:class:`~cxrbench.train.optim.LRSchedule`: warmup, cosine),
weight decay and teacher momentum (cosine from start to end value, DINOv2's ``CosineScheduler``),
teacher temperature (linear warmup, then constant) and the frozen-prototype phase."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from cxrbench.train.optim import LRSchedule


def cosine(step: int, total: int, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * step / total)) / 2``: ``start`` at 0, ``end`` at ``total``."""
    progress = min(1.0, max(0.0, step / max(1, total)))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class SSLSchedules:
    """The per-step values of one pretraining run (steps are optimizer steps counted from 0)."""

    total_steps: int
    steps_per_epoch: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    weight_decay_end: float
    momentum: float
    momentum_end: float
    teacher_temp: float
    warmup_teacher_temp: float
    teacher_temp_steps: int
    freeze_steps: int

    @classmethod
    def from_config(cls, cfg, steps_per_epoch: int) -> SSLSchedules:
        """From a :class:`~cxrbench.pretrain.config.PretrainConfig` and the epoch length in steps."""
        total = steps_per_epoch * cfg.epochs
        return cls(
            total_steps=total,
            steps_per_epoch=steps_per_epoch,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=min(total - 1, round(cfg.warmup_epochs * steps_per_epoch)),
            weight_decay=cfg.weight_decay,
            weight_decay_end=cfg.weight_decay_end,
            momentum=cfg.momentum,
            momentum_end=cfg.momentum_end,
            teacher_temp=cfg.teacher_temp,
            warmup_teacher_temp=cfg.warmup_teacher_temp,
            teacher_temp_steps=round(cfg.warmup_teacher_temp_epochs * steps_per_epoch),
            freeze_steps=round(cfg.freeze_last_layer_epochs * steps_per_epoch),
        )

    @property
    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(self.lr, self.total_steps, self.warmup_steps, "cosine", self.min_lr)

    def wd(self, step: int) -> float:
        return cosine(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def teacher_momentum(self, step: int) -> float:
        return cosine(step, self.total_steps, self.momentum, self.momentum_end)

    def temp(self, step: int) -> float:
        if step < self.teacher_temp_steps:
            return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * (
                step / self.teacher_temp_steps
            )
        return self.teacher_temp

    def prototypes_frozen(self, step: int) -> bool:
        """True while the head's last layer gets no update (DINO's ``freeze_last_layer``)."""
        return step < self.freeze_steps

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)
