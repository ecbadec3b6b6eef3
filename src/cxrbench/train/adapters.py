"""How the fine-tuning loop adapts the backbone: ``full`` (every weight; with ``linear_probe`` only
the head, images still going through the frozen backbone at every step) or ``lora`` (peft adapters
on the attention and MLP projections plus the head; the rest frozen, adapters merged on save).

:func:`setup_adaptation` applies the choice to a freshly built model (on the CPU, before it moves
to the device) and returns an :class:`Adaptation`, which the loop asks for the training mode of an
epoch, the weights to save as best and what to record in ``best.json`` / ``log.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrbench.train.checkpoint import state_dict_cpu
from cxrbench.train.config import TrainConfig


@dataclass
class Adaptation:
    """The adaptation of one run: kind, the head, LoRA's facts, parameter counts."""

    kind: str
    linear_probe: bool
    head: nn.Module
    total_params: int
    trainable_params: int
    head_params: int
    lora: Any = None  # cxrbench.adapt.lora.LoraInfo

    def set_mode(self, model: nn.Module) -> None:
        """Training mode for an epoch: everything trains, except a linear probe's frozen backbone
        (eval mode: no dropout, fixed norms)."""
        model.train()
        if self.linear_probe:
            model.eval()
            self.head.train()

    def best_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights written to ``best.safetensors``: plain timm keys (LoRA merged)."""
        if self.lora is not None:
            from cxrbench.adapt.lora import merged_state_dict

            return merged_state_dict(model)
        return state_dict_cpu(model)

    def record(self) -> dict[str, Any]:
        """What ``best.json`` and the ``start`` line of ``log.jsonl`` say about the adaptation."""
        out: dict[str, Any] = {"adaptation": self.kind, "trainable_params": self.trainable_params,
                               "num_params": self.total_params}
        if self.lora is not None:
            out["lora"] = {**self.lora.to_dict(), "merged": True}
        return out

    def describe(self) -> str:
        """One console line: what trains and how many parameters."""
        share = f"{self.trainable_params:,} of {self.total_params:,} parameters trainable"
        percent = 100 * self.trainable_params / max(1, self.total_params)
        if self.lora is not None:
            lo = self.lora
            return (f"lora r={lo.rank} alpha={lo.alpha:g} dropout={lo.dropout:g} on {len(lo.modules)} "
                    f"modules ({', '.join(lo.targets)}): {lo.adapter_params:,} adapter + "
                    f"{self.head_params:,} head = {share} ({percent:.2g}%)")
        if self.linear_probe:
            return f"linear probe through the frozen backbone: {share} (the head)"
        return f"full fine-tuning: {share}"


def setup_adaptation(cfg: TrainConfig, model: nn.Module, head: nn.Module) -> Adaptation:
    """Freeze / adapt ``model`` (CPU, just built) as ``cfg`` asks; ``head`` is its classifier."""
    lora = None
    if cfg.adaptation == "lora":
        from cxrbench.adapt.lora import LoraSpec, apply_lora

        spec = LoraSpec(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        targets=cfg.lora_targets)
        lora = apply_lora(model, spec, seed=cfg.seed)  # the same adapters on every rank
        head.requires_grad_(True)
    elif cfg.linear_probe:
        model.requires_grad_(False)
        head.requires_grad_(True)
    return Adaptation(kind=cfg.adaptation, linear_probe=cfg.linear_probe, head=head,
                      total_params=sum(p.numel() for p in model.parameters()),
                      trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      head_params=sum(p.numel() for p in head.parameters()), lora=lora)
