"""The report's one-paragraph summary (the Methods section is :mod:`cxrbench.report.methods`)."""

from __future__ import annotations

import numpy as np

from cxrbench.report.results import MEAN, StudyResults, stars


def summary_sentences(res: StudyResults, recipe: str, seed: int) -> list[str]:
    """Which init is best how often, and how often significantly better than the reference."""
    t = res.default_condition()
    t = t[(t["recipe"] == recipe) & (t["seed"] == seed) & (t["finding"] == MEAN)]
    if t.empty:
        return []
    wins: dict[str, int] = {}
    n = 0
    for _, g in t.groupby("dataset", sort=False):
        g = g[np.isfinite(g["auroc"].astype(float))]
        if g.empty:
            continue
        n += 1
        best = g.loc[g["auroc"].astype(float).idxmax(), "init"]
        wins[best] = wins.get(best, 0) + 1
    out = []
    if wins:
        parts = [f"{i} on {k} of {n}" for i, k in sorted(wins.items(), key=lambda kv: -kv[1])]
        out.append("Highest mean AUROC: " + "; ".join(parts) + (" dataset." if n == 1 else " datasets."))
    if res.reference and "p_adjusted" in t.columns:
        for i in res.inits:
            if i == res.reference:
                continue
            gi = t[t["init"] == i]
            if gi.empty or "diff_vs_reference" not in gi.columns:
                continue
            diff = gi["diff_vs_reference"].astype(float)
            sig = [bool(stars(p, res.alpha)) for p in gi["p_adjusted"].astype(float)]
            better = int(sum(s and d > 0 for s, d in zip(sig, diff, strict=True)))
            worse = int(sum(s and d < 0 for s, d in zip(sig, diff, strict=True)))
            tested = int(np.isfinite(gi["p_adjusted"].astype(float)).sum())
            if tested:
                out.append(
                    f"{i} versus {res.reference}: significantly higher on {better}, lower on {worse} "
                    f"of {tested} dataset(s) (BH-adjusted p < {res.alpha:g})."
                )
    return out
