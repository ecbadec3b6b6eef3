"""Benchmark: the subgroup bootstrap versus the plain bootstrap of the same evaluation, in one run.

Baseline: ``cxrbench.stats.bootstrap.bootstrap_metrics`` with fixed thresholds (what ``evaluate``
computes for the whole split: AUROC, AP and the confusion counts of every finding on every
resample). Measured: ``cxrbench.stats.subgroups.subgroup_metrics`` for several subgroup variables
(sex, age band, view, site, two extra columns) over the same images, findings, thresholds and
resamples (AUROC, AP, sensitivity, specificity, PPV, NPV per subgroup, gaps, underdiagnosis). The
figure is the time of the subgroup analysis as a multiple of the baseline (goal <= 3x). A few
subgroup values are checked against scikit-learn on explicit resamples.

Full size (the issue's figure):  python bench/subgroups.py
Smoke run:                       python bench/subgroups.py --images 3000 --resamples 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import subgroups as sg


def make_data(n: int, k: int, variables: int, seed: int):
    """Labels (prevalence 1%..30%, 5% unknown), float32 sigmoid scores (ties), subgroup columns."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < np.linspace(0.01, 0.30, k)).astype(np.float64)
    s = (1 / (1 + np.exp(-(1.2 * y + rng.normal(size=(n, k)) - 2.0)))).astype(np.float32).astype(np.float64)
    y[rng.random((n, k)) < 0.05] = np.nan
    age = rng.uniform(18, 95, n)
    age[rng.random(n) < 0.02] = np.nan
    columns = {
        "sex": rng.choice(["F", "M"], n),
        "age": sg.age_bands(age),
        "view": rng.choice(["PA", "AP", "AP_SUPINE", "LATERAL"], n, p=[0.5, 0.3, 0.1, 0.1]),
        "site": rng.choice(["a", "b", "c", "d", "e"], n),
        "extra1": rng.choice(["u", "v", "w"], n),
        "extra2": rng.choice(["p", "q"], n),
    }
    groups = dict(list(columns.items())[:variables])
    return y, s, groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--variables", type=int, default=6, help="subgroup variables (at most 6)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--cluster", choices=bs.CLUSTERS, default="patient")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    y, s, groups = make_data(a.images, a.findings, min(a.variables, 6), a.seed)
    ids = [f"img{i:07d}" for i in range(a.images)]
    pids = [f"pat{i // 3:07d}" for i in range(a.images)]
    r = bs.make_resamples(ids, pids, a.resamples, a.seed, a.cluster)
    thr = np.full(a.findings, 0.2)
    n_groups = sum(len(set(v)) for v in groups.values())
    print(
        f"subgroup bootstrap: {a.images} images x {a.findings} findings x {len(groups)} variables "
        f"({n_groups} subgroups), B = {a.resamples} {a.cluster} resamples"
    )

    t0 = time.perf_counter()
    bs.bootstrap_metrics(y, s, r, thresholds=thr)
    t_plain = time.perf_counter() - t0
    print(
        f"baseline, plain bootstrap of the whole split (bootstrap_metrics, AUROC + AP + counts at the "
        f"thresholds): {t_plain:.2f} s"
    )

    t0 = time.perf_counter()
    res = sg.subgroup_metrics(y, s, [f"f{j}" for j in range(a.findings)], groups, r, thr, keep_samples=True)
    t_sub = time.perf_counter() - t0
    ratio = t_sub / t_plain
    print(
        f"subgroup_metrics (every subgroup of every variable, 6 metrics, gaps, underdiagnosis): "
        f"{t_sub:.2f} s = {ratio:.2f}x the baseline (goal <= 3x) -> {'PASS' if ratio <= 3 else 'FAIL'}"
    )

    worst = 0.0
    for b in range(min(3, a.resamples)):
        idx = r.indices(b)
        for v in list(groups)[:2]:
            g = str(np.unique(groups[v])[0])
            m = (groups[v][idx] == g) & ~np.isnan(y[idx, -1])
            want = roc_auc_score(y[idx, -1][m], s[idx, -1][m])
            worst = max(worst, abs(res.samples[(v, g, f"f{a.findings - 1}", "auroc")][b] - want))
    print(
        f"max |subgroup AUROC - sklearn on the explicit resample| (spot check): {worst:.1e} "
        f"-> {'PASS' if worst < 1e-12 else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
