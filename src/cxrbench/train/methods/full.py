"""``full``: fine-tuning end to end (the reference study's protocol), or with ``linear_probe`` only the
classification head, the images still going through the frozen backbone at every step (with
augmentation, unlike ``linear`` on cached embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from cxrbench.train.methods.base import Adaptation, Method, Regime, count_params
from cxrbench.train.settings import TrainSettings

if TYPE_CHECKING:
    from torch import nn


class FullFineTuning(Method):
    name: ClassVar[str] = "full"
    summary: ClassVar[str] = "fine-tune every weight (with --linear-probe: the head only, through the " \
                             "frozen backbone)"
    regime: ClassVar[Regime] = "loop"

    def prepare(self, cfg: TrainSettings, model: nn.Module, head: nn.Module) -> Adaptation:
        if cfg.linear_probe:
            model.requires_grad_(False)
            head.requires_grad_(True)
        n = count_params(model, head)
        return Adaptation(kind=self.name, head=head, total_params=n["total_params"],
                          trainable_params=n["trainable_params"], head_params=n["head_params"],
                          backbone_frozen=cfg.linear_probe)

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        return "full fine-tuning (every weight trained)"


METHOD = FullFineTuning()
