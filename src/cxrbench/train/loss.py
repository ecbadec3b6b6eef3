"""The training objective every method that learns weights uses: BCE over the known labels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce_sum(logits: torch.Tensor, y: torch.Tensor,
                   pos_weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of BCE-with-logits over the known labels, number of known labels); NaN labels count 0.

    ``logits`` and ``y`` are float32 ``[B, K]``; ``pos_weight`` ``[K]`` or None. One fused op: the
    mask is BCE's element ``weight``.
    """
    known = (y == y).to(logits.dtype)  # NaN != NaN
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(y, nan=0.0), weight=known,
                                              pos_weight=pos_weight, reduction="sum")
    return loss, known.sum()
