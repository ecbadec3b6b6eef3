"""Multi-crop views for self-distillation, made batched on the training device from the uint8 cache.

One batch of cached radiographs ``uint8 [B, S, S]`` becomes ``n_global`` global views
``[n_global*B, 3, G, G]`` and ``n_local`` local views ``[n_local*B, 3, L, L]``, view-major (the B
images of view 0, then of view 1, ...), each view a random resized crop with flip and rotation (one
``grid_sample`` per view, sampled straight from the cache resolution so a small local crop keeps its
detail), a grey-level brightness/contrast jitter and an occasional Gaussian blur, normalized with the
backbone's mean/std. The per-image parameters are drawn by :meth:`BatchTransform.sample
<cxrbench.data.augment.BatchTransform.sample>` (the fine-tuning path's sampler and conventions:
``rotate(flip(crop(x)))``, counter-clockwise positive angles, black fill) from an explicit
``torch.Generator``, so a resumed run redraws the very same views.

Radiograph choices (docs/pretraining.md): no colour jitter, hue, saturation, grayscale switching or
solarization (the images are grey and their grey levels carry the findings); milder crops than
DINOv2's (global 0.4-1.0 instead of 0.32-1.0 of the area, local 0.1-0.4 instead of 0.05-0.32), as
a chest film's findings are small and located and a tiny crop of it is mostly featureless lung or
soft tissue; rotation of +-7 degrees and horizontal flips as in the fine-tuning recipe.

:func:`sample_masks` draws iBOT's masks for the student's global views on the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.common.errors import InputError
from cxrbench.data.augment import AugmentConfig, AugmentParams, BatchTransform, _channels


class MultiCrop(nn.Module):
    """uint8 ``[B, S, S]`` -> (global views ``[n_global*B, 3, G, G]``, local views ``[n_local*B, 3, L, L]``).

    Args:
        mean, std: the backbone's normalization (3 values, or 1 repeated), for images in [0, 1].
        global_size, local_size: view sides G and L in pixels.
        n_global, n_local: number of views of each kind (DINOv2: 2 and 8).
        global_scale, local_scale: ``(min, max)`` area fractions of the random resized crops.
        ratio: ``(min, max)`` aspect ratio of the crops (log-uniform).
        hflip, rotate: flip probability and maximum rotation in degrees.
        brightness, contrast: multiplicative jitter amplitudes (factors uniform in ``1 +- value``).
        blur: probability of a Gaussian blur per view image; ``blur_sigma`` its ``(min, max)`` sigma in
            pixels of the view.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        global_size: int,
        local_size: int,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.1, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        rotate: float = 7.0,
        brightness: float = 0.2,
        contrast: float = 0.2,
        blur: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 1.5),
    ) -> None:
        super().__init__()
        if n_global < 2 or n_local < 0:
            raise InputError(
                f"{n_global} global / {n_local} local views",
                where="multi-crop",
                fix="use at least 2 global views and 0 or more local views",
            )
        if not 0.0 <= blur <= 1.0 or not 0.0 < blur_sigma[0] <= blur_sigma[1]:
            raise InputError(
                f"blur={blur}, blur_sigma={blur_sigma} are invalid",
                where="multi-crop",
                fix="blur is a probability; blur_sigma is (min, max) with 0 < min <= max",
            )
        self.global_size, self.local_size = int(global_size), int(local_size)
        self.n_global, self.n_local = int(n_global), int(n_local)
        self.blur, self.blur_sigma = float(blur), (float(blur_sigma[0]), float(blur_sigma[1]))
        # the samplers validate the options and draw the per-image parameters (B x 8 uniforms each)
        common = dict(hflip=hflip, rotate=rotate, crop_ratio=ratio, brightness=brightness, contrast=contrast)
        self._global = BatchTransform(mean, std, augment=AugmentConfig(crop_scale=global_scale, **common))
        self._local = BatchTransform(mean, std, augment=AugmentConfig(crop_scale=local_scale, **common))
        self.scales = (self._global.augment.crop_scale, self._local.augment.crop_scale)
        mean_t, std_t = _channels(mean, "mean"), _channels(std, "std")
        self.register_buffer("_scale", (1.0 / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", (-mean_t / std_t).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"{self.n_global} x {self.global_size}px (scale {self.scales[0]}), "
            f"{self.n_local} x {self.local_size}px (scale {self.scales[1]}), blur p={self.blur}"
        )

    def forward(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Views of a batch; every draw comes from ``generator`` in a fixed order (views in order)."""
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise InputError(
                f"expected uint8 images [B, H, W], got {images.dtype} {tuple(images.shape)}",
                where="MultiCrop",
                fix="pass the batch of the cache loader",
            )
        x = images.unsqueeze(1).to(torch.float32).div_(255.0)
        g_src = _source(x, self.global_size, self.scales[0])
        views = [self._view(g_src, self._global, self.global_size, generator) for _ in range(self.n_global)]
        globals_ = torch.cat(views)
        if not self.n_local:
            return globals_, None
        l_src = _source(x, self.local_size, self.scales[1])
        locals_ = torch.cat(
            [self._view(l_src, self._local, self.local_size, generator) for _ in range(self.n_local)]
        )
        return globals_, locals_

    def _view(
        self, src: torch.Tensor, sampler: BatchTransform, size: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        b = src.shape[0]
        p = sampler.sample(b, generator, device=src.device)
        u = torch.rand((b, 2), generator=generator, device=_gen_device(generator, src), dtype=torch.float64)
        u = u.to(src.device)
        x = F.grid_sample(
            src,
            crop_grid(p, size, size, src.dtype),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )
        cfg = sampler.augment
        if cfg.brightness > 0:
            x = x * p.brightness.to(x.dtype).view(-1, 1, 1, 1)
        if cfg.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * p.contrast.to(x.dtype).view(-1, 1, 1, 1) + mean
        if cfg.brightness > 0 or cfg.contrast > 0:
            x = x.clamp(0.0, 1.0)
        if self.blur > 0:
            lo, hi = self.blur_sigma
            sigma = torch.where(u[:, 0] < self.blur, lo + (hi - lo) * u[:, 1], torch.zeros_like(u[:, 1]))
            x = gaussian_blur(x, sigma.to(x.dtype), radius=math.ceil(3 * hi))
        return torch.addcmul(self._shift, x, self._scale)


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _source(x: torch.Tensor, out_size: int, scale: tuple[float, float]) -> torch.Tensor:
    """The batch at the resolution the crops are sampled from: the cache's, or lower when even the
    typical crop would be downsampled (antialiased first, as ``grid_sample`` alone would alias)."""
    typical = math.sqrt(0.5 * (scale[0] + scale[1]))  # crop side as a fraction of the image side
    need = math.ceil(out_size / typical)
    if x.shape[-1] <= need:
        return x
    return F.interpolate(x, size=(need, need), mode="bilinear", antialias=True, align_corners=False)


def crop_grid(p: AugmentParams, out_h: int, out_w: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``grid_sample`` grid ``[B, out_h, out_w, 2]`` of ``rotate(flip(crop(x)))``.

    The same affine map as :class:`~cxrbench.data.augment.BatchTransform` (output pixel centres in
    normalized coordinates -> ``centre + diag(scale) @ Flip @ R(angle) @ out``), for an output size
    that differs from the input's.
    """
    b = p.angle.shape[0]
    device = p.angle.device
    a = torch.deg2rad(p.angle)
    cos, sin = torch.cos(a), torch.sin(a)
    f = torch.where(p.flip, -1.0, 1.0).to(cos.dtype)
    theta = torch.stack(
        [p.scale_x * f * cos, -p.scale_x * f * sin, p.center_x, p.scale_y * sin, p.scale_y * cos, p.center_y],
        dim=1,
    ).to(dtype)
    t = theta.view(b, 6, 1, 1)
    xs = torch.linspace(-1 + 1 / out_w, 1 - 1 / out_w, out_w, device=device, dtype=dtype).view(1, 1, out_w)
    ys = torch.linspace(-1 + 1 / out_h, 1 - 1 / out_h, out_h, device=device, dtype=dtype).view(1, out_h, 1)
    grid = torch.empty((b, out_h, out_w, 2), device=device, dtype=dtype)
    torch.add(t[:, 0] * xs, t[:, 1] * ys + t[:, 2], out=grid[..., 0])
    torch.add(t[:, 3] * xs, t[:, 4] * ys + t[:, 5], out=grid[..., 1])
    return grid


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-image Gaussian blur of ``x [B, 1, H, W]`` with standard deviations ``sigma [B]`` (px);
    ``sigma == 0`` leaves an image unchanged. Separable, one grouped convolution per axis, reflect
    padding; kernels of ``2 * radius + 1`` taps."""
    if not bool((sigma > 0).any()):
        return x
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.clamp(min=1e-6).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    delta = (t == 0).to(x.dtype).expand(b, -1)
    k = torch.where((sigma > 0).view(b, 1), k / k.sum(dim=1, keepdim=True), delta)  # [B, 2r+1]
    y = x.reshape(1, b * c, h, w)
    kernels = k.repeat_interleave(c, dim=0)
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), kernels.view(b * c, 1, -1, 1), groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernels.view(b * c, 1, 1, -1), groups=b * c
    )
    return y.view(b, c, h, w)


def sample_masks(
    n_images: int,
    grid: tuple[int, int],
    generator: torch.Generator | None,
    device: torch.device | str,
    probability: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
) -> torch.Tensor:
    """iBOT masks: bool ``[n_images, rows * cols]``; each image is masked with ``probability``, then a
    uniform ``ratio`` of its patches, chosen at random (iBOT's random patch masking; DINOv2 masks
    blocks, which needs per-image rejection sampling on the CPU). Draws ``n_images * (2 + N)``
    uniforms from ``generator``."""
    n = int(grid[0] * grid[1])
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((n_images, 2 + n), generator=generator, device=gen_device).to(device)
    apply = u[:, 0] < probability
    share = ratio[0] + (ratio[1] - ratio[0]) * u[:, 1]
    count = torch.where(apply, torch.round(share * n), torch.zeros_like(share)).long()  # patches to mask
    rank = u[:, 2:].argsort(dim=1).argsort(dim=1)  # a random permutation of 0..n-1 per image
    return rank < count.view(-1, 1)
