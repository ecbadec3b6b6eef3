"""Square resize, histogram equalization and 8-bit quantization of a decoded radiograph.

Used by the cache build and by prediction, so training and prediction see the same pixels.

* **Resize** (``resize=``): ``stretch`` scales each axis to ``size`` (aspect not kept, as the reference
  study); ``pad`` letterboxes: the longer side becomes ``size``, the image is centred and the border
  is black (0); ``crop`` takes the centred square of side ``min(H, W)`` and scales it to ``size``.
  Resampling (``resample=``) on float32 data: ``area`` (default) shrinks by exact area averaging,
  OpenCV ``INTER_AREA``, which weights every source pixel by its overlap with the output pixel at
  any factor (tested against a brute-force area integral); ``pil-box`` is the resampler of caches
  made before cxrbench 0.2, Pillow's ``BOX``, exact only at integer factors (kept so those caches,
  and the models trained on them, can be reproduced and predicted on). When an axis grows both use
  Pillow ``BICUBIC`` (antialiased, clipped to [0, 1]). An image already ``size x size`` is not
  resampled.
* **Equalization** (``equalize=True``, the reference study's and MIMIC-CXR-JPG's choice) follows
  OpenCV ``equalizeHist`` exactly, ``lut[v] = round((cdf(v) - cdf(v_min)) * 255 / (N - cdf(v_min)))``,
  but on a 16-bit histogram of the resized float image instead of an 8-bit one: an input holding 256
  levels (8-bit source, no resampling) gives OpenCV's result bit for bit, while 16-bit sources and
  the in-between values that area averaging creates are equalized before they are quantized, which
  spreads them over the 256 output levels more evenly. It runs after resizing (as the reference
  study), and in ``pad`` mode on the image content only (the black border stays 0).
* **Without equalization** the [0, 1] image is quantized linearly: ``round(255 x)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice

RESIZE_MODES: tuple[str, ...] = ("stretch", "pad", "crop")
RESAMPLERS: tuple[str, ...] = ("area", "pil-box")
LEGACY_RESAMPLER = "pil-box"  # what a recipe without a resampler was made with
_LEVELS = 65536


class Geometry(NamedTuple):
    """Where an ``(H, W)`` image goes in the ``size x size`` output: the source window taken
    (``crop_top, crop_left, crop_height, crop_width``), resampled to ``content_height x content_width``
    and placed at (``top, left``) of the output (the rest black). One definition for the pixels
    (:func:`preprocess`) and the regions carried into a cache (:mod:`cxrbench.cache.regions`)."""

    crop_top: int
    crop_left: int
    crop_height: int
    crop_width: int
    content_height: int
    content_width: int
    top: int
    left: int


def geometry(shape: tuple[int, int], size: int, resize: str) -> Geometry:
    """The :class:`Geometry` of ``resize`` (stretch, pad or crop) for an image of ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    if resize == "pad":
        ch, cw = _fit_inside((h, w), size)
        return Geometry(0, 0, h, w, ch, cw, (size - ch) // 2, (size - cw) // 2)
    if resize == "crop":
        side = min(h, w)
        return Geometry((h - side) // 2, (w - side) // 2, side, side, size, size, 0, 0)
    return Geometry(0, 0, h, w, size, size, 0, 0)


def preprocess(img: np.ndarray, size: int = 224, resize: str = "stretch",
               equalize: bool = True, resample: str = "area") -> np.ndarray:
    """Decoded image (float [0, 1] ``(H, W)``, or uint8) -> ``uint8 (size, size)``."""
    check_choice("resize", resize, RESIZE_MODES)
    check_choice("resample", resample, RESAMPLERS)
    size = _check_size(size)
    x = _as_float(img)
    g = geometry(x.shape, size, resize)
    x = x[g.crop_top : g.crop_top + g.crop_height, g.crop_left : g.crop_left + g.crop_width]
    content = resize_to(x, g.content_height, g.content_width, resample=resample)
    if resize == "pad":  # equalized on the content only: the border stays black
        out = np.zeros((size, size), dtype=np.uint8)
        rows, cols = slice(g.top, g.top + g.content_height), slice(g.left, g.left + g.content_width)
        out[rows, cols] = _quantize(content, equalize)
        return out
    return _quantize(content, equalize)


def resize_to(x: np.ndarray, height: int, width: int, resample: str = "area") -> np.ndarray:
    """float32 ``(H, W)`` -> float32 ``(height, width)``: exact area averaging to shrink (``area``:
    OpenCV INTER_AREA; ``pil-box``: Pillow BOX, the legacy resampler), bicubic to grow."""
    if x.shape == (height, width):
        return x
    shrink = height <= x.shape[0] and width <= x.shape[1]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if shrink and resample == "area":
        import cv2

        return cv2.resize(x, (width, height), interpolation=cv2.INTER_AREA)
    from PIL import Image

    method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    out = np.asarray(Image.fromarray(x, mode="F").resize((width, height), resample=method), dtype=np.float32)
    return out if shrink else np.clip(out, 0.0, 1.0)


def equalize_hist(x: np.ndarray) -> np.ndarray:
    """Histogram equalization of a float [0, 1] image on 65,536 levels -> uint8 (OpenCV's formula)."""
    q = np.rint(np.clip(x, 0.0, 1.0) * (_LEVELS - 1)).astype(np.uint16)
    hist = np.bincount(q.ravel(), minlength=_LEVELS)
    first = int(np.flatnonzero(hist)[0])
    total, h0 = q.size, int(hist[first])
    if h0 == total:  # constant image: OpenCV keeps the value
        return np.full(q.shape, np.rint(first * 255.0 / (_LEVELS - 1)), dtype=np.uint8)
    scale = np.float32(255.0 / (total - h0))  # float32 arithmetic as OpenCV, so 8-bit inputs match exactly
    lut = np.rint((np.cumsum(hist) - h0).astype(np.float32) * scale)
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return lut[q]


def _quantize(x: np.ndarray, equalize: bool) -> np.ndarray:
    if equalize:
        return equalize_hist(x)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _fit_inside(shape: tuple[int, int], size: int) -> tuple[int, int]:
    h, w = shape
    scale = size / max(h, w)
    return max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))


def _as_float(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"expected a 2-D gray image, got shape {arr.shape}", where="preprocess",
                         fix="decode the file with cxrbench.cache.decode.read_image first")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) * np.float32(1 / 255)
    if not np.issubdtype(arr.dtype, np.floating):
        raise InputError(f"expected float [0, 1] or uint8 pixels, got {arr.dtype}", where="preprocess",
                         fix="decode the file with cxrbench.cache.decode.read_image first")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise InputError("image contains NaN or infinite values", where="preprocess",
                         fix="decode the file with cxrbench.cache.decode.read_image first")
    return arr


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 8 <= int(size) <= 8192:
        raise InputError(f"size={size!r} is not an image side in pixels", where="preprocess",
                         fix="use an integer between 8 and 8192 (224, 336 and 512 are common)")
    return int(size)
