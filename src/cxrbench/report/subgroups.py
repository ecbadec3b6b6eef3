"""Report tables of the subgroup analysis (``subgroups.json``): per-subgroup metrics, largest gaps,
underdiagnosis. Each function takes the plain DataFrames of :mod:`cxrbench.stats.subgroups` (or
:func:`frames` of a ``subgroups.json`` dict) and returns a :class:`~cxrbench.report.tables.Table`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from cxrbench.common.validation import as_float
from cxrbench.report.tables import DASH, NA, Cell, Table, fmt_p

METRIC_LABELS = {
    "auroc": "AUROC",
    "average_precision": "AP",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "underdiagnosis": "underdiagnosis",
}


def frames(doc: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(table, gaps, underdiagnosis)`` DataFrames of a ``subgroups.json`` dict."""
    return (
        pd.DataFrame(doc.get("table", [])),
        pd.DataFrame(doc.get("gaps", [])),
        pd.DataFrame(doc.get("underdiagnosis", [])),
    )


def fmt_ci(value: Any, lo: Any = None, hi: Any = None, digits: int = 3, signed: bool = False) -> str:
    """``0.842 (0.831–0.853)``, the value alone without a CI, or n/a."""
    v = as_float(value)
    if not math.isfinite(v):
        return NA
    spec = f"+.{digits}f" if signed else f".{digits}f"
    text = format(v, spec)
    a, b = as_float(lo), as_float(hi)
    return text if not (math.isfinite(a) and math.isfinite(b)) else f"{text} ({a:{spec}}{DASH}{b:{spec}})"


def subgroup_table(table: pd.DataFrame, finding: str, caption: str | None = None) -> Table:
    """One row per variable and subgroup for ``finding``: counts, prevalence, AUROC, AP, sensitivity
    and specificity with CIs; ``too_few`` and ``unknown`` rows are shown muted with their note."""
    sel = table[table["finding"] == finding]
    header = [
        "variable",
        "subgroup",
        "images",
        "positives (prevalence)",
        "AUROC (CI)",
        "AP",
        "sensitivity (CI)",
        "specificity (CI)",
        "note",
    ]
    rows = []
    for r in sel.to_dict(orient="records"):
        style = "muted" if r.get("too_few") or r.get("subgroup") == "unknown" else ""
        prev = as_float(r.get("prevalence"))
        pos = (
            f"{int(r['n_positive'])} ({100 * prev:.1f}%)"
            if math.isfinite(prev)
            else str(r.get("n_positive", ""))
        )
        rows.append(
            [
                Cell(str(r["variable"])),
                Cell(str(r["subgroup"])),
                Cell(f"{int(r['n']):,}"),
                Cell(pos),
                Cell(fmt_ci(r.get("auroc"), r.get("auroc_lo"), r.get("auroc_hi")), style),
                Cell(fmt_ci(r.get("average_precision")), style),
                Cell(fmt_ci(r.get("sensitivity"), r.get("sensitivity_lo"), r.get("sensitivity_hi")), style),
                Cell(fmt_ci(r.get("specificity"), r.get("specificity_lo"), r.get("specificity_hi")), style),
                Cell(str(r.get("note") or ""), "muted"),
            ]
        )
    notes = [
        "Sensitivity and specificity at the evaluation's threshold (chosen on validation). "
        "Patient-cluster bootstrap CIs; every subgroup shares the same resamples. Rows in grey have "
        "too few positives or negatives (or a missing value) and are left out of the gaps."
    ]
    return Table(caption or f"{finding}: metrics per subgroup", header, rows, notes)


def gap_table(
    gaps: pd.DataFrame, metric: str = "auroc", alpha: float = 0.05, caption: str | None = None
) -> Table:
    """Largest gap per variable and finding for ``metric``: highest and lowest subgroup, the gap with
    its CI, p and the Bonferroni-adjusted p (significant rows styled ``sig``)."""
    sel = gaps[gaps["metric"] == metric] if not gaps.empty else gaps
    label = METRIC_LABELS.get(metric, metric)
    header = ["finding", "variable", "highest", "lowest", f"{label} gap (CI)", "p", "p (Bonferroni)"]
    rows = []
    for r in sel.to_dict(orient="records"):
        if not math.isfinite(as_float(r.get("gap"))):
            rows.append(
                [
                    Cell(str(r["finding"])),
                    Cell(str(r["variable"])),
                    Cell(NA, "muted"),
                    Cell(NA, "muted"),
                    Cell(str(r.get("note") or NA), "muted"),
                    Cell(""),
                    Cell(""),
                ]
            )
            continue
        sig = "sig" if as_float(r.get("p_bonferroni")) < alpha else ""
        rows.append(
            [
                Cell(str(r["finding"])),
                Cell(str(r["variable"])),
                Cell(f"{r['high_group']} ({as_float(r['high']):.3f})"),
                Cell(f"{r['low_group']} ({as_float(r['low']):.3f})"),
                Cell(fmt_ci(r["gap"], r.get("gap_lo"), r.get("gap_hi")), sig, str(r.get("note") or "")),
                Cell(fmt_p(r.get("p_value"))),
                Cell(fmt_p(r.get("p_bonferroni")), sig),
            ]
        )
    notes = [
        f"Gap = highest minus lowest subgroup on the full split; CI and p from the paired bootstrap "
        f"differences of that pair; Bonferroni over the subgroup pairs of the variable "
        f"(significant below {alpha:g} in green)."
    ]
    return Table(caption or f"Largest {label} gaps between subgroups", header, rows, notes)


def underdiagnosis_table(under: pd.DataFrame, caption: str | None = None) -> Table:
    """Underdiagnosis rate (false 'no finding' among images with a finding) per variable and subgroup."""
    header = ["variable", "subgroup", "images with a finding", "underdiagnosis rate (CI)", "note"]
    rows = []
    for r in under.to_dict(orient="records"):
        style = "muted" if r.get("too_few") or r.get("subgroup") == "unknown" else ""
        rows.append(
            [
                Cell(str(r["variable"])),
                Cell(str(r["subgroup"])),
                Cell(f"{int(r['n_with_finding']):,}"),
                Cell(
                    fmt_ci(r.get("underdiagnosis"), r.get("underdiagnosis_lo"), r.get("underdiagnosis_hi")),
                    style,
                ),
                Cell(str(r.get("note") or ""), "muted"),
            ]
        )
    notes = [
        "Share of images with at least one finding (no_finding = 0) that the model calls 'no finding' "
        "at its no_finding threshold: the underdiagnosis measure of Seyyed-Kalantari et al. "
        "(Nat Med 2021). Higher is worse."
    ]
    return Table(caption or "Underdiagnosis per subgroup", header, rows, notes)
