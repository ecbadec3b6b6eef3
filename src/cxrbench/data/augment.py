"""Batched augmentation and normalization on the training device.

:class:`BatchTransform` turns a batch of cached uint8 radiographs ``[B, H, W]`` into the backbone's
input ``[B, 3, S, S]`` float32: gray scaled to [0, 1], (training only) flipped, rotated and cropped
with **one** ``affine_grid``/``grid_sample`` per batch, optionally brightness/contrast jittered,
repeated to three channels and normalized with the backbone's mean/std.

Randomness is owned: every draw comes from the ``torch.Generator`` passed to ``forward`` (or to
:meth:`BatchTransform.sample`), so a training run that saves the generator state resumes with the
same augmentations. Each batch draws a fixed block of ``B x 8`` uniforms whatever options are on,
so switching one augmentation off does not shift the others' random stream.

Conventions: the output is ``rotate(flip(crop(x)))`` (torchvision's RandomResizedCrop ->
RandomHorizontalFlip -> RandomRotation order; rotation about the crop's centre); a positive angle
rotates the content counter-clockwise (as torchvision's ``rotate``); areas rotated in from outside
the image are black (0, as the reference study's ``RandomRotation(fill=0)``); sampling is bilinear
at pixel centres (``align_corners=False``), so a disabled transform is the identity. When the
output size differs from the input size, the batch is first resized with antialiased bilinear
interpolation and then augmented at the output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.common.errors import InputError

_N_DRAWS = 8  # flip, angle, scale, ratio, centre x, centre y, brightness, contrast


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; the defaults are the reference study's (flip p=0.5, rotation ±7°).

    Attributes:
        hflip: probability of a horizontal flip, in [0, 1].
        rotate: maximum rotation in degrees; the angle is uniform in [-rotate, rotate].
        crop_scale: ``(min, max)`` area fraction of a random resized crop, or None for no crop
            (torchvision's RandomResizedCrop uses (0.08, 1.0); radiographs want e.g. (0.8, 1.0)).
        crop_ratio: ``(min, max)`` aspect ratio (width/height) of the crop, drawn log-uniformly.
        brightness: multiplicative brightness jitter, factor uniform in [1 - b, 1 + b].
        contrast: contrast jitter around each image's mean, factor uniform in [1 - c, 1 + c].
    """

    hflip: float = 0.5
    rotate: float = 7.0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        where = "augmentation config"
        if not 0.0 <= self.hflip <= 1.0:
            raise InputError(f"hflip={self.hflip!r} is not a probability", where=where, fix="use 0..1")
        if not 0.0 <= self.rotate <= 180.0:
            raise InputError(f"rotate={self.rotate!r} is out of range", where=where,
                             fix="give the maximum angle in degrees, 0..180")
        if self.crop_scale is not None:
            lo, hi = (float(v) for v in self.crop_scale)
            if not 0.0 < lo <= hi <= 1.0:
                raise InputError(f"crop_scale={self.crop_scale!r} is invalid", where=where,
                                 fix="use (min, max) area fractions with 0 < min <= max <= 1")
            object.__setattr__(self, "crop_scale", (lo, hi))
        lo, hi = (float(v) for v in self.crop_ratio)
        if not 0.0 < lo <= hi:
            raise InputError(f"crop_ratio={self.crop_ratio!r} is invalid", where=where,
                             fix="use (min, max) aspect ratios with 0 < min <= max")
        object.__setattr__(self, "crop_ratio", (lo, hi))
        for name in ("brightness", "contrast"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise InputError(f"{name}={value!r} is out of range", where=where, fix="use 0 <= value < 1")

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (geometry identity)."""
        return cls(hflip=0.0, rotate=0.0)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        """Build from a config mapping; unknown keys raise InputError naming the closest field."""
        from cxrbench.common.validation import check_choice

        fields = list(cls.__dataclass_fields__)
        for key in values:
            check_choice("augmentation key", key, fields, where="augmentation config")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for config.yaml and best.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class AugmentParams:
    """Per-sample random parameters drawn for one batch (all tensors of shape [B])."""

    flip: torch.Tensor  # bool
    angle: torch.Tensor  # degrees, positive = counter-clockwise
    scale_x: torch.Tensor  # crop half-width as a fraction of the image half-width (1 = full)
    scale_y: torch.Tensor
    center_x: torch.Tensor  # crop centre in normalized coordinates [-1, 1]
    center_y: torch.Tensor
    brightness: torch.Tensor  # multiplicative factors
    contrast: torch.Tensor

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(**{k: v.to(device) for k, v in self.__dict__.items()})


class BatchTransform(nn.Module):
    """uint8 ``[B, H, W]`` (or ``[B, 1, H, W]``) -> float32 ``[B, 3, S, S]``, normalized.

    Args:
        mean, std: the backbone's per-channel normalization (3 values, or 1 repeated), applied to
            images scaled to [0, 1]. Use (0, 0, 0)/(1, 1, 1) for the reference study's raw [0, 1].
        out_size: output side S in pixels; None keeps the input size (inputs must then be square).
        augment: training augmentation; None (or ``.eval()``) means resize + normalize only.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], out_size: int | None = None,
                 augment: AugmentConfig | None = None) -> None:
        super().__init__()
        mean_t = _channels(mean, "mean")
        std_t = _channels(std, "std")
        if (std_t <= 0).any():
            raise InputError(f"std={list(std)!r} has a non-positive value", where="BatchTransform",
                             fix="pass the backbone's positive standard deviations")
        if out_size is not None and int(out_size) < 1:
            raise InputError(f"out_size={out_size!r} is not a positive size", where="BatchTransform",
                             fix="give the output side in pixels")
        self.out_size = None if out_size is None else int(out_size)
        self.augment = augment
        # x_norm = x * (1/std) + (-mean/std), one fused op that also repeats gray to 3 channels
        self.register_buffer("_scale", (1.0 / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, augment={self.augment}"

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> AugmentParams:
        """Draw one batch of augmentation parameters (always ``batch_size x 8`` uniforms)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand((batch_size, _N_DRAWS), generator=generator, device=gen_device, dtype=torch.float64)
        if device is not None:
            u = u.to(device)
        cfg = self.augment or AugmentConfig.none()
        flip = u[:, 0] < cfg.hflip
        angle = (2.0 * u[:, 1] - 1.0) * cfg.rotate
        if cfg.crop_scale is not None:
            lo, hi = cfg.crop_scale
            area = lo + (hi - lo) * u[:, 2]
            log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
            ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 3])
            scale_x = torch.sqrt(area * ratio).clamp(max=1.0)
            scale_y = torch.sqrt(area / ratio).clamp(max=1.0)
            center_x = (2.0 * u[:, 4] - 1.0) * (1.0 - scale_x)
            center_y = (2.0 * u[:, 5] - 1.0) * (1.0 - scale_y)
        else:
            scale_x = scale_y = torch.ones_like(angle)
            center_x = center_y = torch.zeros_like(angle)
        brightness = 1.0 + (2.0 * u[:, 6] - 1.0) * cfg.brightness
        contrast = 1.0 + (2.0 * u[:, 7] - 1.0) * cfg.contrast
        return AugmentParams(flip, angle, scale_x, scale_y, center_x, center_y, brightness, contrast)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                params: AugmentParams | None = None) -> torch.Tensor:
        """Transform a batch. Augments only in training mode with an AugmentConfig.

        ``generator`` supplies the random draws (None: torch's default generator); ``params``
        (from :meth:`sample`) overrides the draws, e.g. to replay or inspect an augmentation.
        """
        x = self._to_float(x)
        size = self.out_size or x.shape[-1]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if self.training and self.augment is not None:
            if params is None:
                params = self.sample(x.shape[0], generator, device=x.device)
            x = self._augment(x, params.to(x.device))
        return torch.addcmul(self._shift, x, self._scale)

    def _to_float(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.dim() != 3:
            raise InputError(f"expected a batch of gray images [B, H, W], got shape {tuple(x.shape)}",
                             where="BatchTransform", fix="pass the uint8 batch from the cache loader")
        if x.dtype != torch.uint8:
            raise InputError(f"expected uint8 images, got {x.dtype}", where="BatchTransform",
                             fix="pass the uint8 batch from the cache loader (scaling happens here)")
        if self.out_size is None and x.shape[-1] != x.shape[-2]:
            raise InputError(f"images are {x.shape[-2]}x{x.shape[-1]}, not square", where="BatchTransform",
                             fix="set out_size to resize them")
        return x.unsqueeze(1).to(torch.float32).div_(255.0)

    def _augment(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        cfg = self.augment
        geometric = cfg.hflip > 0 or cfg.rotate > 0 or cfg.crop_scale is not None
        if geometric:
            x = F.grid_sample(x, self._grid(x, p), mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.brightness > 0:
            x = x * p.brightness.to(x.dtype).view(-1, 1, 1, 1)
        if cfg.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * p.contrast.to(x.dtype).view(-1, 1, 1, 1) + mean
        if cfg.brightness > 0 or cfg.contrast > 0:
            x = x.clamp(0.0, 1.0)
        return x

    @staticmethod
    def _grid(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        # Output pixel (normalized coords, y down) -> input sampling point:
        #   in = centre + diag(scale) @ Flip @ R(angle) @ out,
        # i.e. the output is rotate(flip(crop(input))), torchvision's RandomResizedCrop ->
        # RandomHorizontalFlip -> RandomRotation order, rotating about the crop's centre.
        # With y pointing down, sampling through R(a) (the math-orientation matrix) turns the content
        # counter-clockwise on screen, matching torchvision's rotate() (checked in the tests).
        # Same grid as F.affine_grid(theta, align_corners=False), built by broadcasting (several
        # times faster on CPU than affine_grid's batched matmul).
        b, _, h, w = x.shape
        a = torch.deg2rad(p.angle)
        cos, sin = torch.cos(a), torch.sin(a)
        f = torch.where(p.flip, -1.0, 1.0).to(cos.dtype)
        theta = torch.stack([p.scale_x * f * cos, -p.scale_x * f * sin, p.center_x,
                             p.scale_y * sin, p.scale_y * cos, p.center_y], dim=1).to(x.dtype)
        t = theta.view(b, 6, 1, 1)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=x.device, dtype=x.dtype).view(1, 1, w)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=x.device, dtype=x.dtype).view(1, h, 1)
        grid = torch.empty((b, h, w, 2), device=x.device, dtype=x.dtype)
        torch.add(t[:, 0] * xs, t[:, 1] * ys + t[:, 2], out=grid[..., 0])
        torch.add(t[:, 3] * xs, t[:, 4] * ys + t[:, 5], out=grid[..., 1])
        return grid


def _channels(values: Sequence[float] | float, name: str) -> torch.Tensor:
    vals = [float(values)] if isinstance(values, int | float) else [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise InputError(f"{name} has {len(vals)} values", where="BatchTransform",
                         fix="give 3 per-channel values (or 1 for all channels)")
    return torch.tensor(vals, dtype=torch.float32)
