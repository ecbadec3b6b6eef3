"""The networks of self-distillation: DINO's projection head and the backbone-plus-heads module used
as student and (a copy of it) as EMA teacher.

:class:`DINOHead` is DINOv2's ``DINOHead``: an MLP (``n_layers`` linear layers with GELU, hidden
``hidden_dim``, last ``bottleneck_dim``), L2 normalization, and a weight-normalized linear layer to
``out_dim`` prototypes whose norm is fixed at 1 (DINO's ``norm_last_layer``), so the logits are
cosine similarities in [-1, 1]. :class:`SSLNet` runs a timm backbone and returns the CLS feature of
every image and, for a timm ``VisionTransformer``, the patch tokens, with masked patches of the
student's global views replaced by a learned mask token before the first block (iBOT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.common.errors import InputError


class DINOHead(nn.Module):
    """MLP -> L2 normalize -> weight-normalized linear layer with unit-norm rows: ``[N, D] -> [N, out_dim]``.

    Weights are truncated normal (std 0.02), biases zero, drawn from the global torch RNG (callers
    seed it). The last layer has no bias; its norm parameter (``weight_g``) is fixed at 1.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise InputError(f"head_layers={n_layers} is below 1", where="DINOHead", fix="use 1 to 3 layers")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        nn.init.trunc_normal_(last.weight, std=0.02)
        self.last_layer = nn.utils.parametrizations.weight_norm(last)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(False)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the prototype layer (frozen during DINO's first epoch)."""
        return [p for p in self.last_layer.parameters() if p.requires_grad]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        eps = 1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def is_vit(backbone: nn.Module) -> bool:
    """True for a timm ``VisionTransformer`` (patch tokens and a mask token can be used)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(backbone, VisionTransformer)


class SSLNet(nn.Module):
    """A backbone with the DINO head (and the iBOT head): the student, or the EMA teacher.

    Args:
        backbone: a timm model built with ``num_classes=0`` (and ``dynamic_img_size=True`` for
            ViTs, so global and local crops of different sizes go through the same weights).
        head: keyword arguments of :class:`DINOHead` (``out_dim``, ``hidden_dim``, ...).
        ibot: build the iBOT part (needs a ViT): a mask token and, with ``separate_ibot_head``, a
            second head for patch tokens (DINOv2's default shares the DINO head).
    """

    def __init__(
        self, backbone: nn.Module, head: dict, ibot: bool = False, separate_ibot_head: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(backbone.num_features)
        self.vit = is_vit(backbone)
        if ibot and not self.vit:
            raise InputError(
                f"the iBOT loss needs the patch tokens of a timm VisionTransformer, and "
                f"{type(backbone).__name__} is not one",
                where="--ibot",
                fix="pass --no-ibot (DINO and KoLeo losses only) or use a ViT init",
            )
        self.dino_head = DINOHead(self.embed_dim, **head)
        self.ibot_head = DINOHead(self.embed_dim, **head) if ibot and separate_ibot_head else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim)) if ibot else None
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def patch_head(self) -> DINOHead:
        """The head applied to patch tokens (the DINO head unless a separate one was built)."""
        return self.ibot_head if self.ibot_head is not None else self.dino_head

    def grid(self, size: int) -> tuple[int, int]:
        """Patch grid (rows, cols) of a square input of ``size`` px (ViTs only)."""
        patch = self.backbone.patch_embed.patch_size
        return size // int(patch[0]), size // int(patch[1])

    def features(
        self,
        x: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, 3, S, S]`` -> (CLS feature ``[B, D]``, patch tokens ``[B, N, D]`` or None for CNNs).

        ``masks`` (bool ``[B, N]``, ViTs with a mask token only) replaces the embeddings of masked
        patches by the mask token before the position embedding, as DINOv2's ``prepare_tokens_with_masks``.
        """
        bb = self.backbone
        if not self.vit:
            return bb(x), None
        t = bb.patch_embed(x)  # [B, H, W, D] with dynamic_img_size, else [B, N, D]
        if masks is not None:
            if self.mask_token is None:
                raise RuntimeError("masks given to a network built without a mask token")
            m = masks.view(*t.shape[:-1], 1)
            t = torch.where(m, self.mask_token.to(t.dtype).view(*([1] * (t.dim() - 1)), -1), t)
        t = bb._pos_embed(t)
        t = bb.patch_drop(t)
        t = bb.norm_pre(t)
        t = bb.blocks(t)
        t = bb.norm(t)
        prefix = int(bb.num_prefix_tokens)
        return bb.forward_head(t, pre_logits=True), t[:, prefix:]

    def forward(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The student pass (one call, so DDP sees one forward per step).

        Returns ``global_feats [G*B, D]`` (CLS features, for KoLeo), ``global_logits [G*B, K]``,
        ``local_logits [L*B, K]`` (empty without local crops) and, with ``masks`` (bool
        ``[G*B, N]``), ``patch_logits [M, K]`` for the M masked patches in row-major mask order.
        """
        g_feat, g_patch = self.features(global_crops, masks)
        out = {"global_feats": g_feat, "global_logits": self.dino_head(g_feat)}
        if local_crops is not None and local_crops.shape[0]:
            l_feat, _ = self.features(local_crops)
            out["local_logits"] = self.dino_head(l_feat)
        else:
            out["local_logits"] = g_feat.new_zeros((0, out["global_logits"].shape[1]))
        if masks is not None:
            out["patch_logits"] = self.patch_head()(g_patch[masks])
        return out

    @torch.no_grad()
    def teacher(
        self,
        global_crops: torch.Tensor,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher pass on the global crops: CLS logits ``[G*B, K]`` and, with ``masks``, the
        logits of the patches the student had masked ``[M, K]`` (computed for those patches only)."""
        feat, patches = self.features(global_crops)
        logits = self.dino_head(feat)
        patch_logits = self.patch_head()(patches[masks]) if masks is not None else None
        return logits, patch_logits


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` for every parameter the two share by name
    (the student's mask token has no teacher counterpart); buffers are copied."""
    t_params = dict(teacher.named_parameters())
    pairs = [(t_params[n], p) for n, p in student.named_parameters() if n in t_params]
    t_list = [t for t, _ in pairs]
    s_list = [s.detach().to(t.dtype) for t, s in pairs]
    torch._foreach_mul_(t_list, float(momentum))
    torch._foreach_add_(t_list, s_list, alpha=1.0 - float(momentum))
    t_bufs = dict(teacher.named_buffers())
    for n, b in student.named_buffers():
        if n in t_bufs:
            t_bufs[n].copy_(b)
