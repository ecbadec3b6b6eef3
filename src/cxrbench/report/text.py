"""Sentences of the report: the one-paragraph summary and a methods paragraph to adapt for a paper."""

from __future__ import annotations

import numpy as np

from cxrbench.report.results import MEAN, StudyResults, stars


def summary_sentences(res: StudyResults, recipe: str, seed: int) -> list[str]:
    """Which init is best how often, and how often significantly better than the reference."""
    t = res.table
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


def methods_text(res: StudyResults) -> list[str]:
    """A methods paragraph generated from the protocol actually run (edit before publishing)."""
    p = res.protocol or {}
    tr, ev, cmp, pre = (
        p.get("train") or {},
        p.get("evaluation") or {},
        p.get("comparisons") or {},
        p.get("preprocess") or {},
    )
    paras = []
    if pre:
        recs = "; ".join(
            f"{k}: {v.get('size')} px, {v.get('resize')}, "
            f"{'histogram-equalized' if v.get('equalize') else 'no equalization'}"
            for k, v in pre.items()
        )
        paras.append(
            f"Images were converted to 8-bit grayscale and resized offline ({recs}); at training time "
            "the gray image was repeated to three channels and normalized with the statistics of each "
            "initialization's pretraining."
        )
    if tr:
        aug = []
        if tr.get("augment", True):
            if tr.get("hflip"):
                aug.append(f"horizontal flips (p = {tr.get('hflip')})")
            if tr.get("rotate"):
                aug.append(f"rotations up to {tr.get('rotate')} degrees")
        names = ", ".join(f"{k} ({v})" for k, v in res.init_names.items()) or ", ".join(res.inits)
        paras.append(
            f"Every network was fine-tuned end to end from each initialization ({names}) for multi-label "
            f"classification with binary cross-entropy (per-finding positive weights: "
            f"{'yes' if tr.get('pos_weight', True) else 'no'}), AdamW (learning rate {tr.get('lr')}, "
            f"weight decay {tr.get('weight_decay')}), batch size {tr.get('batch_size')}, "
            f"up to {tr.get('epochs')} epochs"
            + (
                f" with early stopping after {tr.get('patience')} epochs without improvement"
                if tr.get("patience")
                else ""
            )
            + (f", augmentation by {' and '.join(aug)}" if aug else "")
            + ". The checkpoint with the highest mean validation AUROC was kept; the test split was used "
            "only for the final evaluation."
        )
    if ev:
        thr = {
            "val": "chosen on the validation split by Youden's J",
            "test": "chosen on the test split by Youden's J (as in the reference code; optimistic)",
            "fixed": f"fixed at {ev.get('fixed_threshold')}",
        }.get(ev.get("threshold"), "")
        paras.append(
            f"Performance on the {ev.get('split', 'test')} split is reported as AUROC per finding and as "
            f"the mean over findings, with {int(round(100 * float(ev.get('ci', res.ci_level))))}% "
            f"percentile confidence intervals from {ev.get('bootstrap')} bootstrap resamples drawn by "
            f"{ev.get('cluster')} (seed {ev.get('seed')}); the same resamples were used for every model, "
            "so comparisons are paired. "
            f"Thresholds for sensitivity, specificity, accuracy and F1 were {thr}."
        )
    if cmp:
        ref = cmp.get("reference")
        who = f"each initialization with {ref}" if ref else "every pair of initializations"
        alt = (
            "one-sided (the first better than the second)"
            if cmp.get("alternative") == "greater"
            else "two-sided"
        )
        fdr = (
            "p-values were adjusted with the Benjamini-Hochberg procedure over the findings of each dataset "
            "(and, for the mean AUROC, over every dataset and initialization of the main table)"
            if cmp.get("fdr", "bh") == "bh"
            else "p-values were not adjusted for multiple testing"
        )
        paras.append(
            f"We compared {who} with a {alt} paired bootstrap test on the AUROC difference "
            f"(DeLong's test reported alongside); {fdr}; significance level {cmp.get('alpha', res.alpha)}."
        )
    return paras
