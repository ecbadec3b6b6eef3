"""Split balance on small data: positives per split per finding, hash split vs stratified split.

Figure (issue 14): a 50-patient phantom of the `csv` layout (a private hospital set; cxrbench
phantom, seed 0), indexed with `--splits hash` (cxrbench 0.1's only made split, the baseline) and
`--splits stratified` (the default way to make or carve splits now) at split seeds 0-9, fractions
70/10/20. Per finding: the minimum over seeds and splits of the positive count, how many (seed,
split) pairs have no positive at all (an undefined AUROC there), and the mean absolute deviation
of the positives from their share. Indexing time of both, as a ratio.

Run:  python bench/splits.py  [--patients 50] [--seeds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()
    from cxrbench.index.build import build_index
    from cxrbench.phantom.generate import generate

    fractions = (0.7, 0.1, 0.2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "csv"
        generate(root, "csv", args.patients, size=32, seed=0, quiet=True)
        mapping = root / "_phantom" / "csv_mapping.yaml"
        stats: dict[str, dict[str, list]] = {}
        seconds = {"hash": 0.0, "stratified": 0.0}
        findings: list[str] = []
        for mode in ("hash", "stratified"):
            for seed in range(args.seeds):
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    df, findings, report = build_index("csv", root, mapping=mapping, split_mode=mode,
                                                       split_seed=seed, split_fractions=fractions)
                seconds[mode] += time.perf_counter() - t
                counts = report["split"]["counts"]
                for f in findings:
                    pos = np.array([counts[s]["findings"][f]["positive"] for s in ("train", "val", "test")])
                    want = pos.sum() * np.asarray(fractions)
                    entry = stats.setdefault(f, {}).setdefault(mode, [])
                    entry.append((pos.min(), int((pos == 0).sum()), float(np.abs(pos - want).mean())))
    n_pos = df[findings].sum()
    patients = (df[findings] == 1).groupby(df["patient_id"]).any().sum()  # positive patients per finding
    print(f"{args.patients} patients ({len(df)} images), splits {fractions}, seeds 0-{args.seeds - 1}")
    print("positives: images (patients); zero: (seed, split) pairs without a positive, of which at least "
          "`floor` are unavoidable (fewer positive patients than splits); dev: mean |positives - share|")
    print(f"{'finding':24s} {'positives':>10s} {'floor':>5s}   {'hash: min':>9s} {'zero':>5s} {'dev':>5s}   "
          f"{'stratified: min':>15s} {'zero':>5s} {'dev':>5s}")
    totals = {"hash": 0, "stratified": 0, "floor": 0}
    for f in findings:
        h, s = np.array(stats[f]["hash"]), np.array(stats[f]["stratified"])
        totals["hash"] += int(h[:, 1].sum())
        totals["stratified"] += int(s[:, 1].sum())
        floor = args.seeds * max(0, 3 - int(patients[f]))
        totals["floor"] += floor
        print(f"{f:24s} {int(n_pos[f]):5d} ({int(patients[f]):2d}) {floor:5d}   {int(h[:, 0].min()):9d} "
              f"{int(h[:, 1].sum()):5d} "
              f"{h[:, 2].mean():5.2f}   {int(s[:, 0].min()):15d} {int(s[:, 1].sum()):5d} "
              f"{s[:, 2].mean():5.2f}")
    cells = len(findings) * args.seeds * 3
    print(f"\n(seed, split, finding) cells without a positive: hash {totals['hash']} of {cells}, "
          f"stratified {totals['stratified']} of {cells} (unavoidable: {totals['floor']}); "
          f"index time stratified / hash = "
          f"{seconds['stratified'] / seconds['hash']:.2f}x")


if __name__ == "__main__":
    main()
