"""Figure: coverage of the pooled (two-level bootstrap) CI when the pretraining is shared by the seeds
versus run once per seed (``pretrain_seeds: shared`` / ``per-seed``).

The estimand of a pooled arm is the expected AUROC of the whole training procedure. Simulated arms:
binormal scores whose separation for seed ``s`` is ``d + u_s + e_s``, ``u`` the pretraining's effect
(``N(0, sd_pretrain)``; one draw for every seed when shared, one per seed otherwise) and ``e`` the
fine-tuning's (``N(0, sd_finetune)`` per seed); the test images' difficulty is shared by the seeds
(correlation ``rho``). The procedure's expected AUROC is ``Phi(d / sqrt(2 + sd_pretrain^2 +
sd_finetune^2))``. Each replicate draws a test set and S seeds, pools them with
``cxrbench.evaluate.pooled.pooled_metrics`` (the study's pooled step) and records whether its 95% CI
holds the estimand. The one-seed case (today's single run) is printed as the baseline.

    python bench/pooled_coverage.py                      # 400 replicates per case
    python bench/pooled_coverage.py --replicates 100     # quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy.stats import norm

from cxrbench.evaluate.pooled import pooled_metrics


def arm(rng: np.random.Generator, n_pos: int, n_neg: int, seeds: int, d: float, sd_pre: float, sd_ft: float,
        shared: bool, rho: float) -> list[pd.DataFrame]:
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    n = y.size
    difficulty = rng.normal(size=n)
    u_shared = rng.normal(0, sd_pre)
    frames = []
    for _ in range(seeds):
        sep = d + (u_shared if shared else rng.normal(0, sd_pre)) + rng.normal(0, sd_ft)
        score = y * sep + np.sqrt(rho) * difficulty + np.sqrt(1 - rho) * rng.normal(size=n)
        frames.append(pd.DataFrame({"image_id": [f"i{k:05d}" for k in range(n)],
                                    "patient_id": [f"p{k:05d}" for k in range(n)],
                                    "p_finding": 1 / (1 + np.exp(-score)), "y_finding": y}))
    return frames


def coverage(args: argparse.Namespace, seeds: int, shared: bool,
             rng: np.random.Generator) -> tuple[float, float]:
    truth = float(norm.cdf(args.d / np.sqrt(2 + args.sd_pretrain**2 + args.sd_finetune**2)))
    hits, widths = [], []
    for _ in range(args.replicates):
        frames = arm(rng, args.positives, args.negatives, seeds, args.d, args.sd_pretrain, args.sd_finetune,
                     shared, args.rho)
        m = pooled_metrics({"arm": frames}, n_resamples=args.resamples, seed=int(rng.integers(1 << 31)),
                           cluster="image")
        row = m[m["finding"] == "finding"].iloc[0]
        hits.append(row["auroc_lo"] <= truth <= row["auroc_hi"])
        widths.append(row["auroc_hi"] - row["auroc_lo"])
    return float(np.mean(hits)), float(np.mean(widths))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--positives", type=int, default=100)
    ap.add_argument("--negatives", type=int, default=300)
    ap.add_argument("--d", type=float, default=1.2, help="mean binormal separation (AUROC about 0.80)")
    ap.add_argument("--sd-pretrain", type=float, default=0.25)
    ap.add_argument("--sd-finetune", type=float, default=0.1)
    ap.add_argument("--rho", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    print(f"estimand AUROC {norm.cdf(args.d / np.sqrt(2 + args.sd_pretrain**2 + args.sd_finetune**2)):.4f}; "
          f"{args.positives} positives / {args.negatives} negatives; sd pretraining {args.sd_pretrain}, "
          f"fine-tuning {args.sd_finetune} (separation units); {args.replicates} replicates, "
          f"{args.resamples} resamples")
    rows = [("one run (baseline)", 1, True), (f"{args.seeds} seeds, shared pretraining", args.seeds, True),
            (f"{args.seeds} seeds, pretraining per seed", args.seeds, False)]
    base = None
    for name, seeds, shared in rows:
        cov, width = coverage(args, seeds, shared, rng)
        base = base or cov
        se = np.sqrt(cov * (1 - cov) / args.replicates)
        print(f"{name:<36} coverage of the 95% CI {cov:.3f} +- {se:.3f}  (x{cov / base:.2f} of the "
              f"baseline)  mean width {width:.4f}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
