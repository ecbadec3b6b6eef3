"""Benchmark: the two-level (images x seeds) bootstrap of an arm versus today's one-seed bootstrap.

Both run here on the same data and the same image resamples. The baseline is today's
``cxrbench.stats.bootstrap.bootstrap_auroc`` for one seed of the arm (what ``compare`` computes per
model); the measured figure is ``cxrbench.stats.seeds.arm_bootstrap`` for all S seeds (every
seed's AUROC on every resample, the seed-ensemble, the seed draws and the full-set points). Time
and peak memory (tracemalloc, numpy's buffers included; measured in a second pass so the clock is
not slowed) are printed as ratios to the baseline. Goal: under 3x the time of one seed.

Full size (the issue's figure):  python bench/seeds_bootstrap.py
Smoke run:                       python bench/seeds_bootstrap.py --images 2000 --resamples 100 --repeat 1
Coverage table for the docs:     python bench/seeds_bootstrap.py --coverage 400
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import seeds as sd


def make_arm(n: int, k: int, n_seeds: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels (n, k), prevalence 1%..30%, 5% unknown; S seeds' float32 sigmoid scores (ties, like a
    model's): a shared signal plus per-seed noise and a per-seed shift of the separation."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.01, 0.30, k)
    y = (rng.random((n, k)) < prevalence).astype(np.float64)
    shared = 1.2 * y + rng.normal(size=(n, k)) - 2.0
    logits = [shared + 0.1 * rng.normal() * y + 0.3 * rng.normal(size=(n, k)) for _ in range(n_seeds)]
    s = (1.0 / (1.0 + np.exp(-np.stack(logits)))).astype(np.float32).astype(np.float64)
    y[rng.random((n, k)) < 0.05] = np.nan
    return y, s, [f"img{i:07d}" for i in range(n)]


def fastest(fns: list[Callable[[], object]], repeat: int) -> tuple[list[float], list[object]]:
    """The fastest of ``repeat`` runs of each function, interleaved (a, b, a, b, ...) so that both see
    the same load on a shared machine; and each one's result."""
    best = [float("inf")] * len(fns)
    out: list[object] = [None] * len(fns)
    for _ in range(max(1, repeat)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            out[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, out


def peak_mib(fn: Callable[[], object]) -> float:
    """Peak traced memory of one run above its start (tracemalloc sees numpy's buffers), in MiB."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak / 2**20


def timing(a: argparse.Namespace) -> None:
    memory = a.memory_mib * 2**20
    y, scores, ids = make_arm(a.images, a.findings, a.seeds, a.seed)
    pids = [f"pat{i // 3:07d}" for i in range(a.images)]
    r = bs.make_resamples(ids, pids, a.resamples, a.seed, a.cluster)
    print(f"two-level bootstrap: {a.images} images x {a.findings} findings x {a.seeds} seeds x "
          f"B = {a.resamples} {a.cluster} resamples ({r.n_units} units); prevalence 1%..30%, 5% unknown "
          f"labels, float32 scores (ties); memory budget {a.memory_mib} MiB; each time the fastest of "
          f"{a.repeat} interleaved runs")
    sd.arm_bootstrap(y[:300], scores[:, :300], bs.make_resamples(ids[:300], n_resamples=2))  # warm-up

    def baseline():
        return bs.bootstrap_auroc(y, scores[0], r, memory_bytes=memory)

    def arm_boot():
        return sd.arm_bootstrap(y, scores, r, memory_bytes=memory)

    fns = [baseline, arm_boot]
    if a.today_all:
        fns.append(lambda: bs.bootstrap_auroc(y, scores, r, memory_bytes=memory))
    times, outs = fastest(fns, a.repeat)
    (t_one, t_arm), (one, arm) = times[:2], outs[:2]
    m_one, m_arm = peak_mib(baseline), peak_mib(arm_boot)
    print(f"baseline, today's one-seed bootstrap (stats.bootstrap.bootstrap_auroc, seed 1 of the arm): "
          f"{t_one:.2f} s, peak {m_one:.0f} MiB")
    print(f"stats.seeds.arm_bootstrap, all {a.seeds} seeds + the seed-ensemble + seed draws + full-set "
          f"points: {t_arm:.2f} s, peak {m_arm:.0f} MiB")
    ratio = t_arm / t_one
    full = a.images * a.findings * a.resamples >= 20_000 * 14 * 1000
    verdict = "PASS" if ratio < 3 else "FAIL"
    if not full:
        verdict = "smoke size: fixed costs dominate, the goal is for the full size"
    print(f"time ratio: {ratio:.2f}x the one-seed bootstrap (goal < 3x) -> {verdict}; "
          f"per seed {ratio / a.seeds:.2f}x; peak memory ratio {m_arm / max(m_one, 1e-9):.2f}x")
    same = np.array_equal(arm.resampled[0], one, equal_nan=True)
    print(f"seed 1's AUROC on every resample equals the baseline bit for bit: {same} -> "
          f"{'PASS' if same else 'FAIL'}")
    if a.today_all:
        print(f"for scale: today's engine on the {a.seeds} seeds as {a.seeds} models: {times[2]:.2f} s = "
              f"{times[2] / t_one:.2f}x ({times[2] / t_arm:.2f}x the time of arm_bootstrap, ensemble "
              "included)")


def simulate(tau: float, n_seeds: int, n_sims: int, n: int, n_resamples: int, mu: float = 1.2,
             rho: float = 0.5) -> tuple[float, float, float]:
    """Coverage of the two-level and of the images-only 95% CI of the pooled mean (see the docs):
    binormal scores, seed s separates the classes by mu + tau z_s, per-image noise correlated rho
    across seeds; the truth is Phi(mu / sqrt(2 + tau^2))."""
    truth = float(norm.cdf(mu / np.sqrt(2 + tau**2)))
    ids = [f"img{i:05d}" for i in range(n)]
    hits2 = hits1 = 0
    for k in range(n_sims):
        rng = np.random.default_rng(10_000 + k)
        y = (rng.random(n) < 0.3).astype(float)
        delta = mu + tau * rng.normal(size=n_seeds)
        scores = (delta[:, None] * y + np.sqrt(rho) * rng.normal(size=n)
                  + np.sqrt(1 - rho) * rng.normal(size=(n_seeds, n)))
        arm = sd.arm_bootstrap(y[:, None], scores[:, :, None],
                               bs.make_resamples(ids, n_resamples=n_resamples, seed=k, cluster="image"))
        two = bs.summarize(arm.pooled[:, 0], arm.pooled_point[0])
        one = bs.summarize(arm.image_only[:, 0], arm.pooled_point[0])
        hits2 += two["ci_low"] <= truth <= two["ci_high"]
        hits1 += one["ci_low"] <= truth <= one["ci_high"]
    return hits2 / n_sims, hits1 / n_sims, truth


def coverage(a: argparse.Namespace) -> None:
    n = 300
    print(f"coverage of the 95% CI of the pooled mean AUROC, {a.coverage} simulations per row, {n} images "
          f"(30% positive), B = 400, binormal mu = 1.2, per-image noise correlation 0.5 across seeds")
    print("seeds  tau  seed SD of AUROC  truth  two-level  images only")
    for n_seeds in (3, 5, 10):
        for tau in (0.0, 0.15, 0.3):
            t0 = time.perf_counter()
            cov2, cov1, truth = simulate(tau, n_seeds, a.coverage, n, 400)
            auc_sd = tau * norm.pdf(1.2 / np.sqrt(2)) / np.sqrt(2)
            print(f"{n_seeds:5d}  {tau:.2f}  {auc_sd:16.3f}  {truth:.3f}  {cov2:9.3f}  {cov1:11.3f}"
                  f"   ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--cluster", choices=bs.CLUSTERS, default="patient")
    p.add_argument("--memory-mib", type=int, default=bs.DEFAULT_MEMORY_BYTES // 2**20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="time each figure this often, keep the fastest")
    p.add_argument("--today-all", action="store_true", help="also time today's engine on all seeds")
    p.add_argument("--coverage", type=int, default=0, metavar="SIMS",
                   help="instead: the coverage table (SIMS simulations per row)")
    a = p.parse_args()
    if a.coverage:
        coverage(a)
    else:
        timing(a)


if __name__ == "__main__":
    main()
