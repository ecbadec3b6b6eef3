"""Saliency maps: Grad-CAM (ViTs and ConvNeXts, through pytorch-grad-cam) and attention rollout (ViTs).

* **Grad-CAM** (Selvaraju et al., ICCV 2017) with the maintained ``pytorch-grad-cam`` package: for a
  ViT (timm ``VisionTransformer`` / ``Eva``, DINOv2 and DINOv3 included) the target layers are the
  first norm of **every** block (the input of each attention, where the class token reads the
  patches; the per-layer maps are averaged by the package) and the reshape transform drops the
  prefix tokens (class and register tokens) and folds the patch tokens back into their grid; for a
  ConvNeXt it is the last stage. One map per finding (the gradient of that finding's logit). Grad-CAM
  on a ViT is no localization guarantee: in our phantom test (``tests/evaluate/test_saliency.py``) a
  small ViT's maps peaked on the lesion with every block and not with the last one alone under earlier
  libraries, and under torch 2.14 / timm 1.0.31 a retrained one's peak hits it no more often than
  chance at any block while rollout hits it every time; hence every map a study shows is scored
  against chance (:mod:`cxrbench.evaluate.localization`).
* **Attention rollout** (Abnar & Zuidema, ACL 2020), ViTs only: per block the head-averaged
  attention plus the identity (residual), rows renormalized, multiplied through the blocks; the map
  is the class token's row over the patches (the mean of the patch rows without a class token).
  It does not depend on the finding: every finding gets the same map.

Maps are float32 in [0, 1] at the model's input size. Overlays blend the grayscale radiograph with
the map in a jet colormap (``pytorch_grad_cam.utils.image.show_cam_on_image``). The package is an
optional dependency: ``pip install 'cxrbench[saliency]'``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice

SALIENCY_METHODS: tuple[str, ...] = ("gradcam", "rollout")


def require_gradcam():
    """The ``pytorch_grad_cam`` module, or one InputError naming the extra to install."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise InputError("saliency maps need the pytorch-grad-cam package", where="--saliency",
                         fix="pip install 'cxrbench[saliency]' (or pip install grad-cam)") from None
    return pytorch_grad_cam


def is_vit(model: nn.Module) -> bool:
    """A timm ViT-like model (patch embedding + transformer blocks)."""
    return hasattr(model, "patch_embed") and hasattr(model, "blocks")


def is_convnext(model: nn.Module) -> bool:
    """A timm ConvNeXt (or any model with convolutional ``stages``)."""
    return hasattr(model, "stages") and not is_vit(model)


def _prefix_tokens(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 1))


def vit_reshape(model: nn.Module):
    """Reshape transform for Grad-CAM on a ViT: (B, N, C) tokens -> (B, C, h, w) patch grid."""
    prefix = _prefix_tokens(model)

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim == 4:  # NHWC blocks (some timm variants)
            return tokens.permute(0, 3, 1, 2)
        patches = tokens[:, prefix:, :]
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise InputError(f"{patches.shape[1]} patch tokens do not form a square grid", where="saliency",
                             fix="use square inputs")
        return patches.reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)

    return reshape


def gradcam_target(model: nn.Module) -> tuple[list[nn.Module], object | None]:
    """The layer(s) Grad-CAM reads and the reshape transform for ``model`` (ViT or ConvNeXt)."""
    timm_model: Any = model
    if is_vit(model):
        layers = [b.norm1 if isinstance(getattr(b, "norm1", None), nn.Module) else b
                  for b in timm_model.blocks]
        return layers, vit_reshape(model)
    if is_convnext(model):
        return [timm_model.stages[-1]], None
    raise InputError(f"no saliency target for a {type(model).__name__}", where="saliency",
                     fix="saliency supports timm ViTs (DINOv2/v3, AugReg, ...) and ConvNeXts")


def gradcam_maps(model: nn.Module, x: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Grad-CAM of each class in ``classes``: float32 ``(B, len(classes), H, W)`` in [0, 1].

    ``x``: the normalized model input ``(B, 3, H, W)`` on the model's device.
    """
    require_gradcam()
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers, reshape = gradcam_target(model)
    out = np.zeros((x.shape[0], len(classes), x.shape[2], x.shape[3]), dtype=np.float32)
    was_training = model.training
    with torch.enable_grad(), GradCAM(model=model, target_layers=layers, reshape_transform=reshape) as cam:
        for i, k in enumerate(classes):
            out[:, i] = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(k))] * x.shape[0])
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return out


class _AttentionRecorder:
    """Forward hooks collecting each block's attention probabilities (the input of ``attn_drop``)."""

    def __init__(self, model: nn.Module) -> None:
        self.maps: list[torch.Tensor] = []
        self.handles = []
        self.fused: list[tuple[Any, bool]] = []
        for block in cast(Any, model).blocks:
            attn: Any = getattr(block, "attn", None)
            drop = getattr(attn, "attn_drop", None)
            if drop is None or not hasattr(attn, "fused_attn"):
                raise InputError(f"cannot read the attention of a {type(model).__name__}", where="saliency",
                                 fix="use --saliency-method gradcam for this model")
            self.fused.append((attn, attn.fused_attn))
            attn.fused_attn = False  # the explicit softmax path, whose probabilities pass attn_drop
            self.handles.append(drop.register_forward_hook(lambda m, i, o: self.maps.append(i[0].detach())))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for attn, fused in self.fused:
            attn.fused_attn = fused


def rollout_maps(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Attention rollout of a ViT: float32 ``(B, H, W)`` in [0, 1]."""
    if not is_vit(model):
        raise InputError(f"attention rollout needs a ViT, not a {type(model).__name__}", where="saliency",
                         fix="use --saliency-method gradcam for ConvNeXts")
    rec = _AttentionRecorder(model)
    try:
        with torch.no_grad():
            model(x)
    finally:
        rec.close()
    prefix = _prefix_tokens(model)
    n = rec.maps[0].shape[-1]
    eye = torch.eye(n, device=x.device)
    joint = eye.expand(x.shape[0], n, n)
    for a in rec.maps:
        a = a.float().mean(dim=1) + eye
        joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
    has_cls = getattr(model, "cls_token", None) is not None
    rel = joint[:, 0, prefix:] if has_cls else joint[:, prefix:, prefix:].mean(dim=1)
    side = math.isqrt(rel.shape[1])
    grid = rel.reshape(-1, 1, side, side)
    up = torch.nn.functional.interpolate(grid, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
    return _unit(up[:, 0].cpu().numpy())


def _unit(maps: np.ndarray) -> np.ndarray:
    """Scale each map to [0, 1] (a flat map becomes zeros)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    scaled = np.where(hi > lo, (flat - lo) / np.where(hi > lo, hi - lo, 1), 0.0)
    return scaled.reshape(maps.shape).astype(np.float32)


def saliency_maps(model: nn.Module, x: torch.Tensor, classes: Sequence[int],
                  method: str = "gradcam") -> np.ndarray:
    """Maps of ``classes`` for the normalized input ``x`` (B, 3, H, W): float32 (B, K, H, W) in [0, 1]."""
    check_choice("--saliency-method", method, SALIENCY_METHODS)
    if method == "gradcam":
        return gradcam_maps(model, x, classes)
    maps = rollout_maps(model, x)
    return np.repeat(maps[:, None], len(classes), axis=1)


def overlay(gray: np.ndarray, saliency: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grayscale image (uint8 (h, w)) under the map (H, W) in jet colours."""
    require_gradcam()
    from PIL import Image
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = saliency.shape
    if gray.shape != (h, w):
        gray = np.asarray(Image.fromarray(gray).resize((w, h), Image.Resampling.BILINEAR))
    rgb = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, saliency.astype(np.float32), use_rgb=True, image_weight=image_weight)


def overlay_on(image: np.ndarray, saliency: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """RGB uint8 at the size of ``image`` (uint8 (H, W)): the map (h, w) upsampled (bilinear) onto it.

    Unlike :func:`overlay`, which draws at the map's (the model input's) size, this keeps the image's
    detail: the map of a 48-px model drawn over the radiograph at 256 px."""
    from PIL import Image

    h, w = image.shape
    if saliency.shape != (h, w):
        saliency = np.asarray(Image.fromarray(saliency.astype(np.float32)).resize((w, h),
                                                                                  Image.Resampling.BILINEAR))
    return overlay(image, np.clip(saliency, 0.0, 1.0), image_weight)


def png_bytes(rgb: np.ndarray, size: int | None = None) -> bytes:
    """PNG of an RGB uint8 image, resized to ``size`` x ``size`` (a thumbnail) when given."""
    from PIL import Image

    img = Image.fromarray(rgb)
    if size is not None:
        img = img.resize((int(size), int(size)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# -- overlay folders ------------------------------------------------------------------------------

SALIENCY_FORMAT = "cxrbench.saliency/1"


def overlay_names(files: Sequence[str], findings: Sequence[str]) -> list[list[str]]:
    """``<stem>_<finding>.png`` per file and finding; a repeated stem gets ``-2``, ``-3``, ... appended."""
    from pathlib import Path

    seen: dict[str, int] = {}
    out = []
    for f in files:
        stem = Path(str(f)).stem
        seen[stem] = seen.get(stem, 0) + 1
        base = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        out.append([f"{base}_{finding}.png" for finding in findings])
    return out


def check_saliency_dir(out_dir, names: Sequence[str]) -> list[str]:
    """Refuse to write where a file we did not write would be replaced; returns our earlier files.

    ``out_dir`` must be new, empty, or a previous saliency folder (holding ``saliency.json``).
    """
    from pathlib import Path

    from cxrbench.common.fileio import read_json
    from cxrbench.common.layout import SALIENCY_MANIFEST

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("the saliency output is a file, not a folder", where=str(out),
                         fix="give a folder for the overlay PNGs")
    earlier: list[str] = []
    manifest = out / SALIENCY_MANIFEST
    if manifest.is_file():
        doc = read_json(manifest)
        if not isinstance(doc, dict) or doc.get("format") != SALIENCY_FORMAT:
            raise InputError(f"{SALIENCY_MANIFEST} was not written by cxrbench", where=str(manifest),
                             fix="choose another --saliency folder")
        earlier = [str(e["overlay"]) for e in doc.get("files", [])]
    foreign = [n for n in names if (out / n).exists() and n not in earlier]
    if foreign:
        raise InputError(f"{len(foreign)} overlay file(s) would replace files cxrbench did not write "
                         f"(e.g. {foreign[0]!r})", where=str(out),
                         fix="choose a new or empty --saliency folder")
    return earlier
