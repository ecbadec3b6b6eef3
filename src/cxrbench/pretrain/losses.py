"""The self-distillation losses of the DINOv2 recipe: teacher targets (centering or Sinkhorn-Knopp),
the DINO cross-view loss, the iBOT masked-patch loss and the KoLeo regularizer.

Written from the papers and Meta's reference code (DINO, Caron et al. 2021, arXiv:2104.14294;
iBOT, Zhou et al. 2022, arXiv:2111.07832; DINOv2, Oquab et al. 2024, arXiv:2304.07193, its
``dinov2/loss/*.py``; KoLeo, Sablayrolles et al. 2019, arXiv:1806.03198) rather than taken from
``lightly``: lightly's ``DINOLoss`` couples the centering with the loss and has no Sinkhorn-Knopp
target, and the package pulls in pytorch-lightning and hydra. Each piece is tested against lightly's
implementation (``tests/pretrain/test_losses.py``) and against a slow loop.

Shapes: ``K`` prototypes (the head's outputs), ``B`` images per view on this process. Everything is
computed in float32 whatever the autocast dtype of the forward pass. Under torchrun the batch
statistics (the center's batch mean, Sinkhorn-Knopp's sums) are all-reduced, so N processes compute
the targets of one process holding the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.common import distributed as dist_


def _f32(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (half/bfloat16 autocast outputs are promoted; float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


class Center(nn.Module):
    """DINO's teacher center: an exponential moving average of the teacher's logits ``[1, K]``.

    ``center <- m * center + (1 - m) * mean(batch)``, the batch mean taken over every image of every
    process. The center is a buffer, so it is saved and restored with the loss module's state.
    """

    def __init__(self, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = float(momentum)
        self.register_buffer("center", torch.zeros(1, dim))

    @torch.no_grad()
    def update(self, logits: torch.Tensor, env: dist_.DistEnv | None = None) -> None:
        """Move the center towards the mean of ``logits`` ``[N, K]`` (all-reduced under DDP); a batch
        without rows on any process (no masked patch anywhere) leaves it unchanged."""
        env = env or dist_.DistEnv()
        total = _f32(logits).sum(dim=0, keepdim=True)
        count = torch.tensor([float(logits.shape[0])], device=logits.device)
        dist_.all_reduce_sum(total, env)
        dist_.all_reduce_sum(count, env)
        moved = self.center * self.momentum + (total / count.clamp(min=1.0)) * (1.0 - self.momentum)
        self.center.copy_(torch.where(count > 0, moved, self.center))  # no host sync

    def probs(self, logits: torch.Tensor, temp: float) -> torch.Tensor:
        """Centered, sharpened teacher targets: ``softmax((logits - center) / temp)``, rows sum to 1."""
        return F.softmax((_f32(logits) - self.center) / float(temp), dim=-1)


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor, temp: float, n_iter: int = 3, env: dist_.DistEnv | None = None
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (DINOv2's ``sinkhorn_knopp_teacher``): ``[N, K]``, rows sum to 1.

    Starts from ``Q = exp(logits / temp)`` and alternately normalizes the prototypes (rows of ``Q^T``)
    to equal mass ``1/K`` and the images to mass ``1/B_global``, so the batch uses every prototype
    about equally (an equipartition instead of DINO's centering). A global maximum is subtracted
    first: a constant factor of ``Q`` cancels in the first normalization, so this only avoids
    overflow (per-image shifts would not cancel).
    """
    env = env or dist_.DistEnv()
    x = _f32(logits) / float(temp)
    peak = x.max().reshape(1) if x.numel() else torch.full((1,), -torch.inf, device=x.device)
    if env.enabled:
        import torch.distributed as dist

        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    q = torch.exp(x - peak).t()  # [K, N]
    n_global = torch.tensor([float(q.shape[1])], device=q.device)
    dist_.all_reduce_sum(n_global, env)
    k = q.shape[0]
    total = q.sum().reshape(1)
    dist_.all_reduce_sum(total, env)
    q = q / total
    for _ in range(int(n_iter)):
        rows = q.sum(dim=1, keepdim=True)
        dist_.all_reduce_sum(rows, env)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / n_global
    return (q * n_global).t()


def dino_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], student_temp: float = 0.1
) -> torch.Tensor:
    """DINO's cross-view loss: mean over (student view, teacher view) pairs of different views of
    the batch-mean cross-entropy ``-sum_k t_k log softmax(s / student_temp)_k``.

    ``student``: logits ``[B, K]`` per view, the global views first (view i of the student and view i
    of the teacher are the same crop, and that pair is skipped); ``teacher``: target probabilities
    ``[B, K]`` per global view. With 2 global and L local views that is ``2 + 2L`` pairs, DINOv2's
    ``n_global_crops_loss_terms + n_local_crops_loss_terms``.
    """
    total = torch.zeros((), device=student[0].device, dtype=_f32(student[0]).dtype)
    pairs = 0
    for s_idx, s in enumerate(student):
        logp = F.log_softmax(_f32(s) / float(student_temp), dim=-1)
        for t_idx, t in enumerate(teacher):
            if s_idx == t_idx:
                continue
            total = total - (t * logp).sum(dim=-1).mean()
            pairs += 1
    if pairs == 0:
        raise ValueError("the DINO loss needs at least two views")
    return total / pairs


def ibot_loss(
    student: torch.Tensor, teacher: torch.Tensor, masks: torch.Tensor, student_temp: float = 0.1
) -> torch.Tensor:
    """iBOT's masked-patch loss: per image, the mean over its masked patches of the cross-entropy
    between the teacher's patch targets and the student's masked patch logits; averaged over all
    images of the masked views (an image without a masked patch counts 0, as in DINOv2).

    ``student`` logits and ``teacher`` probabilities are ``[M, K]`` for the M masked patches, in the
    row-major order of ``masks`` (bool ``[n_images, n_patches]``, ``M = masks.sum()``).
    """
    n_images = masks.shape[0]
    if student.shape[0] == 0:
        return student.sum() * 0.0  # no masked patch here: zero, but in the graph (DDP needs every grad)
    ce = -(teacher * F.log_softmax(_f32(student) / float(student_temp), dim=-1)).sum(dim=-1)  # [M]
    per_image = masks.sum(dim=1, keepdim=True).clamp(min=1).to(ce.dtype)  # [n_images, 1]
    weight = (1.0 / per_image).expand_as(masks)[masks]  # [M]
    return (ce * weight).sum() / n_images


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo regularizer (Kozachenko-Leonenko entropy estimator, DINOv2's ``KoLeoLoss``):
    ``-mean_i log(||x_i - x_nn(i)|| + eps)`` over L2-normalized features ``[B, D]``, which spreads the
    batch's features uniformly over the sphere. Needs ``B >= 2``."""
    x = F.normalize(_f32(features), p=2, dim=-1, eps=eps)
    with torch.no_grad():
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)  # never one's own neighbour
        nearest = sim.argmax(dim=1)
    dist = F.pairwise_distance(x, x[nearest], p=2, eps=eps)
    return -torch.log(dist + eps).mean()


@torch.no_grad()
def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of target rows ``[N, K]``: near 0 when the teacher collapses to one-hot
    targets, ``log K`` when it collapses to uniform ones (a collapse monitor for the log)."""
    p = _f32(probs).clamp(min=1e-12)
    return -(p * p.log()).sum(dim=-1).mean()


class SSLObjective(nn.Module):
    """The whole objective of one step: teacher targets, DINO + iBOT + KoLeo, center updates.

    Holds the centers (buffers: saved with the run's checkpoint). ``forward`` takes the student's
    outputs (:meth:`cxrbench.pretrain.heads.SSLNet.forward`), the teacher's global CLS logits
    ``[n_global*B, K]`` and masked-patch logits ``[M, K]`` (or None), the masks and the teacher
    temperature, and returns float32 scalars ``loss`` (weighted sum), ``dino``, ``ibot``, ``koleo``
    and the teacher's target ``entropy``. The centers move after the targets are computed, as in DINO.
    """

    def __init__(
        self,
        out_dim: int,
        n_global: int = 2,
        n_local: int = 8,
        centering: str = "center",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
        student_temp: float = 0.1,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        ibot: bool = True,
    ) -> None:
        super().__init__()
        if centering not in ("center", "sinkhorn"):
            raise ValueError(f"centering must be center or sinkhorn, got {centering!r}")
        self.n_global, self.n_local = int(n_global), int(n_local)
        self.centering, self.iterations = centering, int(sinkhorn_iterations)
        self.student_temp = float(student_temp)
        self.weights = (float(dino_weight), float(ibot_weight), float(koleo_weight))
        self.use_ibot = bool(ibot)
        self.dino_center = Center(out_dim, center_momentum)
        self.ibot_center = Center(out_dim, center_momentum) if ibot else None

    def targets(
        self, logits: torch.Tensor, temp: float, center: Center | None, env: dist_.DistEnv | None
    ) -> torch.Tensor:
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(logits, temp, self.iterations, env)
        return center.probs(logits, temp)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher_logits: torch.Tensor,
        teacher_patch_logits: torch.Tensor | None,
        masks: torch.Tensor | None,
        temp: float,
        env: dist_.DistEnv | None = None,
    ) -> dict[str, torch.Tensor]:
        w_dino, w_ibot, w_koleo = self.weights
        t_probs = self.targets(teacher_logits, temp, self.dino_center, env)
        s_views = [*student["global_logits"].chunk(self.n_global)]
        if self.n_local:
            s_views += [*student["local_logits"].chunk(self.n_local)]
        dino = dino_loss(s_views, t_probs.chunk(self.n_global), self.student_temp)
        zero = dino.new_zeros(())
        ibot = zero
        if self.use_ibot and masks is not None and teacher_patch_logits is not None:
            p_probs = self.targets(teacher_patch_logits, temp, self.ibot_center, env)
            ibot = ibot_loss(student["patch_logits"], p_probs, masks, self.student_temp)
        koleo = zero
        if w_koleo > 0:
            koleo = sum(koleo_loss(f) for f in student["global_feats"].chunk(self.n_global))
        loss = w_dino * dino + w_ibot * ibot + w_koleo * koleo
        if self.centering == "center":
            self.dino_center.update(teacher_logits, env)
            if self.ibot_center is not None and teacher_patch_logits is not None:
                self.ibot_center.update(teacher_patch_logits, env)
        return {
            "loss": loss,
            "dino": dino.detach(),
            "ibot": ibot.detach(),
            "koleo": koleo.detach(),
            "entropy": entropy(t_probs),
        }
