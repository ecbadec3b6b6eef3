"""Site styles: how one hospital's radiographs look different from another's.

A style changes acquisition and post-processing, never anatomy or findings: quantum noise,
detector blur, edge enhancement, exposure, contrast and gamma, the heel-effect gradient, anti-scatter
grid lines, collimation borders and the burned-in side marker. Sites ``"A"``, ``"B"`` and ``"C"``
are hand-tuned to differ clearly; any other name is hashed to a reproducible style.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
from scipy import ndimage

from cxrbench.common.errors import InputError


@dataclasses.dataclass(frozen=True)
class SiteStyle:
    """Acquisition look of one site. Pixel lengths are given for a 256-px image and scale with size.

    noise: quantum noise standard deviation at full brightness (intensity units, [0, 1] scale).
    blur: detector blur, Gaussian sigma in px. sharpen: unsharp-mask gain (CR edge enhancement).
    exposure: brightness offset. contrast: gain around mid-grey. gamma: output gamma (> 1 darker).
    heel: top-to-bottom brightness gradient (fraction). grid: amplitude of vertical grid lines.
    border: collimation width per side as a fraction of the image (left, top, right, bottom);
    border_value: intensity outside the collimation (0 black mask, 1 unexposed film).
    marker: burned-in text (``"{view}"`` is replaced by PA/AP); marker_corner: 0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right.
    """

    name: str
    noise: float = 0.02
    blur: float = 0.6
    sharpen: float = 0.3
    exposure: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0
    heel: float = 0.0
    grid: float = 0.0
    border: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    border_value: float = 0.0
    marker: str = "R"
    marker_corner: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.noise <= 0.5 or self.blur < 0 or self.gamma <= 0 or self.contrast <= 0:
            raise InputError(
                f"site style {self.name!r} has out-of-range values",
                where="site style",
                fix="noise in [0, 0.5], blur >= 0, gamma > 0, contrast > 0",
            )
        if any(not 0 <= b < 0.3 for b in self.border):
            raise InputError(
                f"site style {self.name!r}: border fractions must be in [0, 0.3)",
                where="site style",
                fix="use smaller collimation borders",
            )


PRESET_STYLES: dict[str, SiteStyle] = {
    # A: modern DR detector, low noise, light processing, no collimation visible.
    "A": SiteStyle(
        "A",
        noise=0.018,
        blur=0.5,
        sharpen=0.25,
        exposure=0.0,
        contrast=1.0,
        gamma=1.0,
        heel=0.0,
        grid=0.0,
        border=(0.0, 0.0, 0.0, 0.0),
        border_value=0.0,
        marker="R",
        marker_corner=0,
    ),
    # B: older CR with a grid, noisier and softer, brighter, black digital collimation mask.
    "B": SiteStyle(
        "B",
        noise=0.035,
        blur=1.3,
        sharpen=0.0,
        exposure=0.06,
        contrast=0.82,
        gamma=0.8,
        heel=0.08,
        grid=0.025,
        border=(0.07, 0.03, 0.06, 0.05),
        border_value=0.0,
        marker="L",
        marker_corner=1,
    ),
    # C: strong edge enhancement, high contrast, darker, white unexposed borders, view label.
    "C": SiteStyle(
        "C",
        noise=0.03,
        blur=0.8,
        sharpen=0.9,
        exposure=-0.04,
        contrast=1.2,
        gamma=1.3,
        heel=-0.05,
        grid=0.0,
        border=(0.04, 0.06, 0.04, 0.02),
        border_value=1.0,
        marker="{view}",
        marker_corner=3,
    ),
}

_HASHED_MARKERS = ("R", "L", "{view}", "ERECT", "SUPINE", "PORTABLE")


def site_style(site: str | SiteStyle) -> SiteStyle:
    """The style of ``site``: a preset for ``"A"``, ``"B"``, ``"C"``, else derived from a hash of the name."""
    if isinstance(site, SiteStyle):
        return site
    site = str(site)
    if not site.strip():
        raise InputError("site name is empty", where="--site", fix="give a name such as A, B or C")
    if site in PRESET_STYLES:
        return PRESET_STYLES[site]
    digest = hashlib.sha256(f"cxrbench-site:{site}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    has_border = rng.random() < 0.6
    border = tuple(float(b) for b in (rng.uniform(0.0, 0.08, 4) if has_border else np.zeros(4)))
    return SiteStyle(
        site,
        noise=float(rng.uniform(0.012, 0.05)),
        blur=float(rng.uniform(0.3, 1.5)),
        sharpen=float(rng.choice([0.0, rng.uniform(0.2, 1.0)])),
        exposure=float(rng.uniform(-0.06, 0.06)),
        contrast=float(rng.uniform(0.8, 1.2)),
        gamma=float(np.exp(rng.uniform(np.log(0.75), np.log(1.35)))),
        heel=float(rng.uniform(-0.08, 0.08)),
        grid=float(rng.choice([0.0, rng.uniform(0.01, 0.03)])),
        border=border,  # type: ignore[arg-type]
        border_value=float(rng.choice([0.0, 1.0])),
        marker=str(rng.choice(_HASHED_MARKERS)),
        marker_corner=int(rng.integers(0, 4)),
    )


# 5x7 bitmap font for the marker letters (rows top to bottom, '#' = ink).
_FONT: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "#####"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
}


def text_bitmap(text: str) -> np.ndarray:
    """Boolean (7, 6 * len(text) - 1) bitmap of ``text`` in the 5x7 font (unknown letters are blank)."""
    cols = []
    for i, ch in enumerate(text.upper()):
        glyph = _FONT.get(ch, (".....",) * 7)
        cols.append(np.array([[c == "#" for c in row] for row in glyph], dtype=bool))
        if i < len(text) - 1:
            cols.append(np.zeros((7, 1), dtype=bool))
    return np.concatenate(cols, axis=1) if cols else np.zeros((7, 0), dtype=bool)


def apply_style(
    images: np.ndarray,
    style: SiteStyle,
    views: list[str],
    seeds: np.ndarray,
    exposure_jitter: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the acquisition look of ``style`` to clean renderings, in place where possible.

    images: float32 (N, H, W) in about [0, 1]; views: N view names (for the ``{view}`` marker);
    seeds: N integers, one per image; its noise depends on its seed alone (not on the batch).
    exposure_jitter: N per-image exposure offsets (intensity units). Returns float32 in [0, 1].
    """
    n, h, w = images.shape
    px = h / 256.0
    out = images
    if style.blur > 0:
        out = _blur(out, style.blur * px)
    if style.sharpen > 0:
        out = out + style.sharpen * (out - _lowpass(out, 4.0 * px))
    offset = style.exposure + (exposure_jitter.reshape(n, 1, 1) if exposure_jitter is not None else 0.0)
    out = (out - 0.5) * style.contrast + 0.5 + offset
    if style.heel:
        out = out * (1.0 + style.heel * np.linspace(-1, 1, h, dtype=np.float32)[None, :, None])
    np.clip(out, 0.0, 1.0, out=out)
    if style.gamma != 1.0:
        out **= np.float32(style.gamma)
    if style.grid:
        period = max(2.0, 3.0 * px)
        out += style.grid * np.cos(2 * np.pi * np.arange(w, dtype=np.float32) / period)[None, None, :]
    if style.noise:
        scale = style.noise * np.sqrt(np.clip(out, 0.0, 1.0) + 0.05)
        for i in range(n):
            out[i] += scale[i] * _noise(int(seeds[i]), h, w)
    if any(style.border):
        left, top, right, bottom = (
            int(round(b * s)) for b, s in zip(style.border, (w, h, w, h), strict=True)
        )
        if left:
            out[:, :, :left] = style.border_value
        if right:
            out[:, :, w - right :] = style.border_value
        if top:
            out[:, :top, :] = style.border_value
        if bottom:
            out[:, h - bottom :, :] = style.border_value
    if style.marker:
        _stamp_markers(out, style, views)
    np.clip(out, 0.0, 1.0, out=out)
    return out.astype(np.float32, copy=False)


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (N, H, W) along H and W (edges repeated); short kernels by shifts."""
    radius = int(np.ceil(3.0 * sigma))
    if radius > 4:
        return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma), mode="nearest", truncate=3.0)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = images
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        length = out.shape[axis]
        acc = taps[0] * padded.take(np.arange(0, length), axis=axis)
        for k in range(1, len(taps)):
            sl = [slice(None)] * 3
            sl[axis] = slice(k, k + length)
            acc += taps[k] * padded[tuple(sl)]
        out = acc
    return out


_NOISE_FRAMES = 8


@functools.lru_cache(maxsize=4)
def _noise_bank(h: int, w: int) -> np.ndarray:
    """A fixed bank of standard-normal frames (read-only) from which each image's noise is cut."""
    bank = np.random.default_rng(0x5EED).standard_normal((_NOISE_FRAMES, h, w), dtype=np.float32)
    bank.flags.writeable = False
    return bank


def _noise(seed: int, h: int, w: int) -> np.ndarray:
    """Standard-normal noise (h, w) for one image, determined by ``seed`` alone.

    Small images: a frame of a fixed bank, circularly shifted and flipped by amounts drawn from the
    seed (much cheaper than drawing h * w normals); large images (> 512 px): drawn afresh.
    """
    rng = np.random.default_rng([seed, 1])
    if h * w > 512 * 512:
        return rng.standard_normal((h, w), dtype=np.float32)
    k, dy, dx, flip = (
        rng.integers(0, _NOISE_FRAMES),
        rng.integers(0, h),
        rng.integers(0, w),
        rng.integers(0, 4),
    )
    frame = np.roll(_noise_bank(h, w)[k], (int(dy), int(dx)), axis=(0, 1))
    if flip & 1:
        frame = frame[::-1]
    if flip & 2:
        frame = frame[:, ::-1]
    return frame


def _lowpass(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of (N, H, W) with ``sigma`` px, computed on a 4x smaller grid when possible."""
    n, h, w = images.shape
    if sigma < 3.0 or h % 4 or w % 4:
        return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma), mode="nearest", truncate=2.5)
    small = images.reshape(n, h // 4, 4, w // 4, 4).mean(axis=(2, 4), dtype=np.float32)
    small = ndimage.gaussian_filter(small, sigma=(0, sigma / 4, sigma / 4), mode="nearest", truncate=3.0)
    return _upsample_matrix(h, h // 4) @ small @ _upsample_matrix(w, w // 4).T


@functools.lru_cache(maxsize=8)
def _upsample_matrix(big: int, small: int) -> np.ndarray:
    """(big, small) linear interpolation weights from cell centres of the small grid."""
    x = (np.arange(big) + 0.5) * small / big - 0.5
    i0 = np.clip(np.floor(x).astype(int), 0, small - 1)
    i1 = np.clip(i0 + 1, 0, small - 1)
    t = np.clip(x - np.floor(x), 0, 1)
    t = np.where(x < 0, 0.0, np.where(x > small - 1, 1.0, t))
    m = np.zeros((big, small))
    np.add.at(m, (np.arange(big), i0), 1 - t)
    np.add.at(m, (np.arange(big), i1), t)
    return m.astype(np.float32)


def _stamp_markers(images: np.ndarray, style: SiteStyle, views: list[str]) -> None:
    n, h, w = images.shape
    cell = max(1, int(round(h / 128)))
    margin = int(round(0.03 * h)) + 1
    cache: dict[str, np.ndarray] = {}
    for i in range(n):
        view = views[i] if views[i] in ("PA", "AP") else ("AP" if views[i] == "AP_SUPINE" else "LAT")
        text = style.marker.replace("{view}", view)
        if text not in cache:
            cache[text] = np.kron(text_bitmap(text), np.ones((cell, cell), dtype=bool))
        bm = cache[text]
        bh, bw = bm.shape
        if bh + 2 * margin > h or bw + 2 * margin > w:
            continue
        left = (
            margin + int(round(style.border[0] * w))
            if style.marker_corner in (0, 2)
            else w - margin - bw - int(round(style.border[2] * w))
        )
        top = (
            margin + int(round(style.border[1] * h))
            if style.marker_corner in (0, 1)
            else h - margin - bh - int(round(style.border[3] * h))
        )
        region = images[i, top : top + bh, left : left + bw]
        region[bm] = 0.97
