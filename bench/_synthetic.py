"""Radiograph-like test images for the benchmarks (used when the phantom generator is not installed).

Vectorized numpy: a body silhouette, two dark lung fields with rib texture, a bright heart and
spine, a smooth random field and noise, with per-image jitter. The content only has to look like a
radiograph to the codecs (PNG/JPEG compressibility and decode cost), not to a radiologist.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def radiographs(n: int, size: int, seed: int = 0, batch: int = 64) -> Iterator[np.ndarray]:
    """Yield uint8 ``(size, size)`` images, ``n`` in total, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    pos = np.clip((grid + 1) / 2 * 7, 0, 7)
    interp = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(8)[None, :])).astype(np.float32)  # (size, 8)
    for start in range(0, n, batch):
        b = min(batch, n - start)

        def jitter(scale: float, b: int = b) -> np.ndarray:
            return rng.normal(0, scale, (b, 1, 1)).astype(np.float32)

        body = np.clip(1 - (xx / (0.85 + jitter(0.03))) ** 2, 0, 1) ** 0.5
        img = 0.15 + 0.45 * body
        for side in (-1, 1):
            cx, cy = side * (0.38 + jitter(0.02)), -0.05 + jitter(0.03)
            lung = ((xx - cx) / (0.26 + jitter(0.02))) ** 2 + ((yy - cy) / (0.55 + jitter(0.03))) ** 2 < 1
            ribs = 0.05 * np.sin((yy - 0.3 * np.abs(xx)) * (26 + jitter(1.0)) + jitter(3.0))
            img = img - lung * (0.25 + ribs)
        heart = ((xx - 0.1 - jitter(0.02)) / (0.24 + jitter(0.02))) ** 2 + ((yy - 0.25) / 0.2) ** 2 < 1
        img = img + 0.22 * heart + 0.18 * np.exp(-(xx / 0.06) ** 2)
        low = rng.normal(0, 1, (b, 8, 8)).astype(np.float32)
        smooth = np.einsum("ik,bkl,jl->bij", interp, low, interp, optimize=True)  # bilinear upsampling
        img = img + 0.03 * smooth + rng.normal(0, 0.012, img.shape).astype(np.float32)
        yield from np.clip(img * 255, 0, 255).astype(np.uint8)
