"""Report rows of the shortcut baseline: each image model against the metadata-only model.

Input: the DataFrame of :func:`cxrbench.evaluate.shortcut.shortcut_check` (one per model, or
several concatenated): compare rows plus ``beats_shortcut`` and ``warning``.
"""

from __future__ import annotations

import math

import pandas as pd

from cxrbench.common.validation import as_float
from cxrbench.report.subgroups import fmt_ci
from cxrbench.report.tables import NA, Cell, Table, fmt_p


def shortcut_table(
    check: pd.DataFrame, caption: str = "Image models versus the metadata-only shortcut"
) -> Table:
    """Rows per model and finding (the mean last): AUROC of the model and of the shortcut, the
    difference (CI), one-sided p (BH over the findings) and whether the model beats it."""
    header = ["model", "finding", "AUROC model", "AUROC shortcut", "difference (CI)", "p (BH)", "beats it"]
    rows = []
    for r in check.to_dict(orient="records"):
        mean = r["finding"] == "mean"
        if not math.isfinite(as_float(r.get("auroc_a"))):
            rows.append(
                [
                    Cell(str(r["model_a"])),
                    Cell(str(r["finding"])),
                    Cell(NA, "muted"),
                    Cell(NA, "muted"),
                    Cell(str(r.get("note") or ""), "muted"),
                    Cell(""),
                    Cell(""),
                ]
            )
            continue
        beats = bool(r.get("beats_shortcut"))
        p = r.get("p_bootstrap") if mean else r.get("p_adjusted")
        rows.append(
            [
                Cell(str(r["model_a"])),
                Cell(str(r["finding"]), "mean" if mean else ""),
                Cell(f"{as_float(r['auroc_a']):.3f}"),
                Cell(f"{as_float(r['auroc_b']):.3f}", "muted"),
                Cell(
                    fmt_ci(r.get("diff"), r.get("diff_lo"), r.get("diff_hi"), signed=True),
                    "sig" if beats else "sigworse",
                ),
                Cell(fmt_p(p)),
                Cell("yes" if beats else "NO", "sig" if beats else "sigworse", str(r.get("warning") or "")),
            ]
        )
    notes = [
        "The shortcut is a logistic regression on view, sex, age and site/dataset only (fitted on the "
        "train split, never a pixel). One-sided paired bootstrap (H1: model > shortcut), "
        "Benjamini-Hochberg over the findings; the mean row is its own test. A model that does not beat "
        "it may read the acquisition (AP vs PA, the site) rather than the finding."
    ]
    return Table(caption, header, rows, notes + warning_lines(check))


def warning_lines(check: pd.DataFrame) -> list[str]:
    """The check's warnings, once per model (image model / init): the findings it does not beat the
    shortcut on, in one line, with the mean's figures when the mean does not beat it either."""
    if "warning" not in check.columns or "model_a" not in check.columns:
        return []
    out = []
    for model, g in check.groupby("model_a", sort=False):
        bad = g[[isinstance(w, str) and bool(w) for w in g["warning"]]]
        if bad.empty:
            continue
        findings = [str(f) for f in bad["finding"] if f != "mean"]
        mean = bad[bad["finding"] == "mean"]
        parts = []
        if findings:
            parts.append(f"{len(findings)} of {int((g['finding'] != 'mean').sum())} finding(s) "
                         f"({', '.join(findings)})")
        if len(mean):
            m = mean.iloc[0]
            parts.append(f"the mean AUROC ({as_float(m['auroc_a']):.3f} vs {as_float(m['auroc_b']):.3f})")
        out.append(f"Warning: {model} does not beat the metadata-only shortcut on " + " and on ".join(parts)
                   + "; it may read the acquisition (AP vs PA, the site) rather than the finding "
                   "(figures in the table above).")
    return out
