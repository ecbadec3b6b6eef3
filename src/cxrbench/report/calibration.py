"""Report pieces of the calibration analysis: the calibration table (before/after recalibration),
reliability diagrams (PNG bytes), and the operating-point table of external validation.

Inputs are plain DataFrames: :func:`cxrbench.evaluate.analysis.calibration_table` and
:func:`~cxrbench.evaluate.analysis.reliability_frame` of a ``calibration.json`` dict, and
:func:`cxrbench.evaluate.operating.operating_points`.
"""

from __future__ import annotations

import math

import pandas as pd

from cxrbench.common.validation import as_float
from cxrbench.report.plots import _figure, _png
from cxrbench.report.subgroups import fmt_ci
from cxrbench.report.tables import NA, SMALL, Cell, Table
from cxrbench.stats.calibration import INTERCEPT_MAX, MIN_FIT_CLASS, SLOPE_RANGE

UNSTABLE = SMALL  # the mark of a number not to be read as it stands


def calibration_table(df: pd.DataFrame, caption: str = "Calibration per finding") -> Table:
    """Rows ``finding, stage``: ECE (CI), Brier (CI), slope, intercept (columns of
    ``evaluate.analysis.calibration_table``); ``after`` rows name the recalibration method."""
    header = ["finding", "probabilities", "ECE (CI)", "Brier (CI)", "slope", "intercept"]
    rows = []
    warned: list[str] = []
    for r in df.to_dict(orient="records"):
        after = r.get("stage") == "after"
        stage = f"recalibrated ({r.get('method')})" if after else "as predicted"
        warning = str(r.get("warning") or "") if after else ""
        if warning:
            warned.append(f"{r['finding']}: {warning}")
            stage += f" {UNSTABLE}"
        unstable = str(r.get("unstable") or "")
        rows.append(
            [
                Cell("" if after else str(r["finding"])),
                Cell(stage, "muted" if after else "", warning),
                Cell(fmt_ci(r.get("ece"), r.get("ece_lo"), r.get("ece_hi")), "muted" if warning else ""),
                Cell(fmt_ci(r.get("brier"), r.get("brier_lo"), r.get("brier_hi"))),
                _fit_cell(r.get("slope"), unstable),
                _fit_cell(r.get("intercept"), unstable),
            ]
        )
    notes = [
        "ECE over equal-mass bins with its bootstrap CI; slope and intercept of the logistic fit of the "
        "labels on logit(p) (1 and 0 when calibrated; a slope below 1 means over-confident). "
        "Recalibration maps are fitted on the validation split only."
    ]
    if any(str(r.get("unstable") or "") for r in df.to_dict(orient="records")):
        notes.append(f"{UNSTABLE}: slope and intercept unstable (a fit that did not converge, a slope "
                     f"outside {SLOPE_RANGE[0]:g}-{SLOPE_RANGE[1]:g}, |intercept| above {INTERCEPT_MAX:g}, "
                     f"or fewer than {MIN_FIT_CLASS} positives or negatives): do not read them as "
                     "calibration.")
    notes += [f"Warning: {w}" for w in warned]
    return Table(caption, header, rows, notes)


def _fit_cell(value: object, unstable: str) -> Cell:
    """A slope or intercept, marked and muted when the fit is unstable (the reason as its title)."""
    return Cell(_f(value, 2) + f" {UNSTABLE}", "muted", unstable) if unstable else Cell(_f(value, 2))


def _f(x, digits: int = 3) -> str:
    v = as_float(x)
    return f"{v:.{digits}f}" if math.isfinite(v) else NA


def reliability_figure(
    rel: pd.DataFrame, max_cols: int = 4, title: str = "Reliability diagrams"
) -> bytes | None:
    """One panel per finding: observed fraction positive versus mean predicted probability per bin
    (marker area ~ images in the bin), before and after recalibration, and the diagonal."""
    if rel.empty:
        return None
    findings = list(dict.fromkeys(rel["finding"]))
    cols = min(max_cols, len(findings))
    rows = math.ceil(len(findings) / cols)
    fig = _figure(2.7 * cols, 2.6 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = {"before": "#1f77b4", "after": "#d62728"}
    labels = {"before": "as predicted", "after": "recalibrated"}
    for k, f in enumerate(findings):
        ax = axes[k // cols][k % cols]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
        for stage, part in rel[rel["finding"] == f].groupby("stage", sort=False):
            part = part.sort_values("mean_predicted")
            size = 6 + 60 * part["n"] / max(1, part["n"].max())
            ax.plot(
                part["mean_predicted"],
                part["fraction_positive"],
                lw=1.2,
                color=colours.get(stage, "#555"),
                label=labels.get(stage, stage),
            )
            ax.scatter(
                part["mean_predicted"], part["fraction_positive"], s=size, color=colours.get(stage, "#555")
            )
        ax.set_title(f.replace("_", " "), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("fraction positive", fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("mean predicted", fontsize=8)
        if rel["stage"].nunique() > 1:
            ax.legend(fontsize=6.5, loc="upper left", frameon=False)
    for k in range(len(findings), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def operating_table(df: pd.DataFrame, caption: str = "Operating points on external validation") -> Table:
    """Per finding: sensitivity/specificity at the source's threshold next to the target's own Youden
    optimum, and the Youden's J lost by keeping the source threshold (from ``operating_points``)."""
    header = [
        "finding",
        "source threshold",
        "sensitivity at source (CI)",
        "specificity at source (CI)",
        "target optimum",
        "sensitivity at optimum",
        "specificity at optimum",
        "J lost (CI)",
    ]
    rows = []
    for r in df.to_dict(orient="records"):
        if not math.isfinite(as_float(r.get("target_threshold"))):
            rows.append(
                [Cell(str(r["finding"]))] + [Cell(NA, "muted")] * 6 + [Cell(str(r.get("note")), "muted")]
            )
            continue
        loss = as_float(r.get("youden_loss_lo"))
        rows.append(
            [
                Cell(str(r["finding"])),
                Cell(_f(r.get("source_threshold"))),
                Cell(
                    fmt_ci(
                        r.get("sensitivity_at_source"),
                        r.get("sensitivity_at_source_lo"),
                        r.get("sensitivity_at_source_hi"),
                    )
                ),
                Cell(
                    fmt_ci(
                        r.get("specificity_at_source"),
                        r.get("specificity_at_source_lo"),
                        r.get("specificity_at_source_hi"),
                    )
                ),
                Cell(_f(r.get("target_threshold")), "muted"),
                Cell(_f(r.get("sensitivity_at_target")), "muted"),
                Cell(_f(r.get("specificity_at_target")), "muted"),
                Cell(
                    fmt_ci(r.get("youden_loss"), r.get("youden_loss_lo"), r.get("youden_loss_hi")),
                    "sigworse" if math.isfinite(loss) and loss > 0 else "",
                ),
            ]
        )
    notes = [
        "The source threshold is Youden's J on the source's validation split, applied unchanged; the "
        "target optimum is chosen on the target itself (optimistic: the best a re-tuned threshold could "
        "do). J lost = J at the optimum minus J at the source threshold, paired bootstrap CI (red when "
        "the CI excludes 0)."
    ]
    return Table(caption, header, rows, notes)
