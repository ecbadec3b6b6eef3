"""Before training: how large a difference each test set can detect, and how many test patients the
study's planned comparison needs (``study run --dry-run``; the ``power:`` section of the config).

Per dataset and finding, from the index's test split once it exists (positives and negatives among the
test images, images per patient): the minimum detectable AUROC difference of a paired comparison at the
planned AUROC, correlation, power and the comparisons' alpha (:mod:`cxrbench.stats.power`), and the test
patients the planned difference needs at that finding's prevalence. Before indexing: the patients the
planned difference needs at the configured (or a 10%) prevalence.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.stats.power import min_detectable_difference, patients_needed
from cxrbench.study.steps import Plan

_PREVALENCE = 0.1  # before indexing, without power.prevalence


def planning_lines(plan: Plan) -> list[str]:
    """The dry run's power lines (one header, then one line per dataset and finding)."""
    from cxrbench.index.schema import read_index

    cfg = plan.study.config
    pw, alpha = cfg.power, cfg.comparisons.alpha
    sided = "one-sided" if cfg.comparisons.alternative == "greater" else "two-sided"
    alternative = "greater" if sided == "one-sided" else "two-sided"
    lines = [f"power of a paired comparison ({sided} alpha {alpha:g}, {pw.power:.0%} power, reference AUROC "
             f"{pw.auroc:g}, correlation {pw.correlation:g}; planned difference {pw.difference:g}; images "
             "counted as independent, so these are lower bounds on what is needed):"]
    kw: dict[str, Any] = {"alpha": alpha, "power": pw.power, "alternative": alternative}
    for name, ds in cfg.datasets.items():
        path = plan.study.layout.index_file(name)
        if not path.is_file():
            prev = pw.prevalence or _PREVALENCE
            need = patients_needed(pw.difference, pw.auroc, prev, pw.correlation, **kw)
            lines.append(f"  {name}: not indexed yet; a difference of {pw.difference:g} needs "
                         f"{_count(need)} test patients at prevalence {prev:g} (one image each)")
            continue
        try:
            df, findings = read_index(path)
        except InputError as e:  # the dry run describes; `study run` reports a broken index
            lines.append(f"  {name}: index not readable ({e.what})")
            continue
        test = df[df["split"] == "test"]
        if test.empty:
            lines.append(f"  {name}: no test split")
            continue
        per_patient = len(test) / max(1, int(test["patient_id"].nunique()))
        for f in ds.findings or findings:
            if f not in test.columns:
                continue
            y = test[f].to_numpy(dtype=np.float64, na_value=np.nan)
            pos, neg = int((y == 1).sum()), int((y == 0).sum())
            mdd = (min_detectable_difference(pw.auroc, pos, neg, pw.correlation, **kw) if pos and neg
                   else np.nan)
            need = patients_needed(pw.difference, pw.auroc, pos / (pos + neg), pw.correlation,
                                   images_per_patient=per_patient, **kw) if pos and neg else None
            lines.append(f"  {name}/{f}: {pos} positive / {neg} negative test images: detects "
                         + (f"{mdd:.3f}" if np.isfinite(mdd) else "no difference up to AUROC 1")
                         + f"; {pw.difference:g} needs {_count(need)} test patients")
    return lines


def _count(n: int | None) -> str:
    return f"{n:,}" if n is not None else "more than 10,000,000"
