"""Learning rate as a pure function of the optimizer step, and the optimizer's parameter groups.

The schedule has no hidden state (as in nanoGPT): ``lr(step)`` is computed from the step number,
so resuming needs nothing but the step. Layer-wise lr decay (BEiT/timm) multiplies each group's lr
by ``lr_scale = layer_decay ** (depth - layer)``; the head has scale 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from cxrbench.common.errors import InputError


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup from ~0 to ``base_lr``, then constant or cosine down to ``min_lr``.

    Steps are optimizer steps, counted from 0; ``total_steps`` is the length of the whole run.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "constant"
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "cosine"):
            raise InputError(f"unknown schedule {self.kind!r}", where="schedule",
                             fix="use constant or cosine")
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise InputError(f"bad schedule length (total {self.total_steps}, warmup {self.warmup_steps})",
                             where="schedule", fix="train for at least one step")

    def lr(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return self.base_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step`` (times its ``lr_scale``); returns the unscaled lr."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The schedule's parameters (its only state besides the step)."""
        return asdict(self)


def unwrap(model: nn.Module) -> nn.Module:
    """Unwrap DDP / torch.compile wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(orig := getattr(model, "_orig_mod", None), nn.Module):
            model = orig
        else:
            return model


def param_groups(model: nn.Module, weight_decay: float = 0.0, layer_decay: float | None = None,
                 ) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on biases/norms/tokens; optional layer-wise lr decay.

    Uses timm's grouping (``model.group_matcher``, else its automatic fallback), so any timm
    backbone works. Frozen parameters (``requires_grad=False``) are left out.
    """
    from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay

    base: Any = unwrap(model)
    no_wd = set(base.no_weight_decay()) if hasattr(base, "no_weight_decay") else set()
    if layer_decay is not None and layer_decay < 1.0:
        groups = param_groups_layer_decay(base, weight_decay=weight_decay, no_weight_decay_list=no_wd,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(base, weight_decay=weight_decay, no_weight_decay_list=no_wd)
        for g in groups:
            g["lr_scale"] = 1.0
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise InputError("the model has no trainable parameters", where="model",
                         fix="check --linear-probe and the model's head")
    return groups


def layer_scales(groups: list[dict[str, Any]]) -> list[float]:
    """Distinct lr scales present in ``groups``, ascending (for the start-of-run summary)."""
    return sorted({float(g.get("lr_scale", 1.0)) for g in groups})
