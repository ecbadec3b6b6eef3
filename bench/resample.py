"""How exact each resampler is: the difference to a brute-force area average, in grey levels.

Figure (issue 14): at three non-integer shrink factors (2500x2048 -> 224, 1800x1700 -> 224,
333x500 -> 100), the max and mean absolute difference (in 8-bit grey levels, 1 = 1/255) between
``resize_to`` and an exact area average computed independently (float64: every output pixel is
the overlap-weighted mean of the input pixels its footprint covers, as two dense weight matrices),
for the resampler of caches made before cxrbench 0.2 (``pil-box``, Pillow BOX) and the current one
(``area``, OpenCV INTER_AREA). Images: smoothed noise (a radiograph's low frequencies) and a sharp
pattern (text, wires and collimation edges), plus the real radiographs in ../shared/data/real_cxr/
at their own sizes when present. Also the share of output pixels off by more than one grey level.

The baseline is the brute-force average itself (the ratio printed is the error in levels); times
are printed for the two resamplers as a ratio to each other.

Run:  python bench/resample.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_cxr"


def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights: row o averages input cells over [o, o+1) * n_in / n_out."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        lo, hi = o * scale, (o + 1) * scale
        first, last = int(np.floor(lo)), min(int(np.ceil(hi)), n_in)
        for i in range(first, last):
            w[o, i] = min(hi, i + 1) - max(lo, i)
        w[o] /= w[o].sum()
    return w


def brute_force(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The exact area average of ``x`` (float64) onto (height, width)."""
    return area_matrix(x.shape[0], height) @ x.astype(np.float64) @ area_matrix(x.shape[1], width).T


def images(rng: np.random.Generator) -> list[tuple[str, np.ndarray, int]]:
    """(name, float32 image in [0, 1], output side)."""
    import cv2

    out = []
    for (h, w), side in (((2500, 2048), 224), ((1800, 1700), 224), ((333, 500), 100)):
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), sigmaX=max(h, w) / 200)
        noise = (noise - noise.min()) / (noise.max() - noise.min())
        sharp = np.zeros((h, w), np.float32)
        sharp[:, (np.arange(w) // 7) % 3 == 0] = 1.0  # thin bright lines every 21 px, like wires
        sharp[h // 3: h // 3 + 5, :] = 0.8
        out += [(f"smooth {h}x{w}->{side}", noise, side), (f"sharp  {h}x{w}->{side}", sharp, side)]
    if REAL.is_dir():
        from cxrbench.cache.decode import read_image

        for f in sorted(REAL.iterdir()):
            if f.suffix.lower() in (".png", ".jpg", ".dcm"):
                try:
                    x = read_image(f)
                except Exception:  # a file the reader refuses is not this figure's concern
                    continue
                if min(x.shape) > 224:
                    out.append((f"real   {f.name[:18]} {x.shape[0]}x{x.shape[1]}->224", x, 224))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from cxrbench.cache.preprocess import resize_to

    rng = np.random.default_rng(args.seed)
    print(f"{'image':44s} {'resampler':9s} {'max diff':>9s} {'mean diff':>10s} {'> 1 level':>10s} {'ms':>7s}")
    times = {"pil-box": 0.0, "area": 0.0}
    worst = {"pil-box": 0.0, "area": 0.0}
    for name, x, side in images(rng):
        exact = brute_force(x, side, side) * 255
        for method in ("pil-box", "area"):
            t = time.perf_counter()
            got = resize_to(x, side, side, resample=method).astype(np.float64) * 255
            times[method] += time.perf_counter() - t
            d = np.abs(got - exact)
            worst[method] = max(worst[method], float(d.max()))
            print(f"{name:44s} {method:9s} {d.max():9.4f} {d.mean():10.5f} {(d > 1).mean():9.1%} "
                  f"{(time.perf_counter() - t) * 1e3:7.1f}")
    print(f"\nworst difference to the exact area average: pil-box {worst['pil-box']:.3f} grey levels, "
          f"area {worst['area']:.2e} grey levels; "
          f"time area / pil-box = {times['area'] / times['pil-box']:.2f}x")


if __name__ == "__main__":
    main()
