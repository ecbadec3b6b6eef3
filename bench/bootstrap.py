"""Benchmark: bootstrap AUROC, cxrbench's vectorized engine versus the reference study's method.

The reference study's evaluation loops over resamples and findings and calls
``sklearn.metrics.roc_auc_score`` on each resampled set. Both run here on the same data and the same
resamples (the reference loop is fed the explicit index list of each cxrbench resample), so the
values must agree to 1e-12. The loop is slow, so it is timed on the first ``--baseline-resamples``
resamples and extrapolated linearly to all of them (each resample costs the same: n images and K
sklearn calls); the output says so.

Full size (the issue's figure):  python bench/bootstrap.py
Smoke run:                       python bench/bootstrap.py --images 2000 --findings 3 --resamples 100 \
                                     --baseline-resamples 10 --large-images 4000 --large-findings 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrbench.stats import bootstrap as bs


def make_data(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels (n, k), prevalence 1%..30%, 5% unknown; float32 sigmoid scores (ties, like a model's)."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.01, 0.30, k)
    y = (rng.random((n, k)) < prevalence).astype(np.float64)
    logits = 1.2 * y + rng.normal(size=(n, k)) - 2.0
    s = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32).astype(np.float64)
    y[rng.random((n, k)) < 0.05] = np.nan
    return y, s, [f"img{i:07d}" for i in range(n)]


def reference_loop(y: np.ndarray, s: np.ndarray, resamples: bs.Resamples, n_resamples: int) -> np.ndarray:
    """The reference study's method: for each resample, for each finding, sklearn on the resampled set."""
    out = np.full((n_resamples, y.shape[1]), np.nan)
    for b in range(n_resamples):
        idx = resamples.indices(b)
        for k in range(y.shape[1]):
            yy, ss = y[idx, k], s[idx, k]
            known = ~np.isnan(yy)
            yy, ss = yy[known], ss[known]
            if 0 < yy.sum() < yy.size:
                out[b, k] = roc_auc_score(yy, ss)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--baseline-resamples", type=int, default=50,
                   help="resamples on which the sklearn loop is timed (then extrapolated linearly)")
    p.add_argument("--large-images", type=int, default=50_000)
    p.add_argument("--large-findings", type=int, default=20)
    p.add_argument("--cluster", choices=bs.CLUSTERS, default="image")
    p.add_argument("--memory-mib", type=int, default=bs.DEFAULT_MEMORY_BYTES // 2**20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    memory = a.memory_mib * 2**20
    n_base = min(a.baseline_resamples, a.resamples)

    y, s, ids = make_data(a.images, a.findings, a.seed)
    pids = [f"pat{i // 3:07d}" for i in range(a.images)]
    resamples = bs.make_resamples(ids, pids, a.resamples, a.seed, a.cluster)
    print(f"bootstrap AUROC: {a.images} images x {a.findings} findings, B = {a.resamples} {a.cluster} "
          f"resamples (seed {a.seed}); prevalence 1%..30%, 5% unknown labels, float32 scores (ties)")
    reference_loop(y[:200], s[:200], bs.make_resamples(ids[:200], n_resamples=1), 1)  # warm-up

    t0 = time.perf_counter()
    ref = reference_loop(y, s, resamples, n_base)
    t_ref_part = time.perf_counter() - t0
    t_ref = t_ref_part * a.resamples / n_base
    print(f"baseline, reference method (loop over resamples x findings calling sklearn roc_auc_score): "
          f"timed on {n_base} of {a.resamples} resamples ({n_base * a.findings} calls) "
          f"in {t_ref_part:.2f} s, "
          f"extrapolated linearly to {a.resamples} resamples: {t_ref:.1f} s")

    t0 = time.perf_counter()
    fast = bs.bootstrap_auroc(y, s, resamples, memory_bytes=memory)
    t_fast = time.perf_counter() - t0
    chunk = bs.chunk_size(a.images, a.resamples, memory)
    print(f"cxrbench.bootstrap.bootstrap_auroc, all {a.resamples} resamples (resample generation included; "
          f"chunks of {chunk} resamples, {a.memory_mib} MiB budget): {t_fast:.2f} s")
    both = ~np.isnan(ref)
    same_nan = np.array_equal(np.isnan(ref), np.isnan(fast[:n_base]))
    diff = float(np.max(np.abs(ref[both] - fast[:n_base][both]))) if both.any() else float("nan")
    ratio = t_ref / t_fast
    print(f"speed-up vs baseline: {ratio:.1f}x (goal >= 25x) -> {'PASS' if ratio >= 25 else 'FAIL'}")
    print(f"max |cxrbench - sklearn| over the {int(both.sum())} compared values: {diff:.2e} "
          f"(goal <= 1e-12), undefined resamples identical: {same_nan} -> "
          f"{'PASS' if diff <= 1e-12 and same_nan else 'FAIL'}")

    if a.large_images > 0:
        yl, sl, idsl = make_data(a.large_images, a.large_findings, a.seed + 1)
        pl = [f"pat{i // 3:07d}" for i in range(a.large_images)]
        rl = bs.make_resamples(idsl, pl, a.resamples, a.seed, a.cluster)
        t0 = time.perf_counter()
        bs.bootstrap_auroc(yl, sl, rl, memory_bytes=memory)
        t_large = time.perf_counter() - t0
        work = (a.large_images * a.large_findings) / (a.images * a.findings)
        print(f"large split: {a.large_images} images x {a.large_findings} findings, B = {a.resamples}: "
              f"{t_large:.2f} s = {t_large / t_fast:.2f}x the time of the run above for {work:.2f}x the work "
              f"(reference method extrapolated: {t_ref * work:.0f} s, {t_ref * work / t_large:.0f}x slower)")


if __name__ == "__main__":
    main()
