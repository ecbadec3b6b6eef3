"""The report's figures as PNG bytes (matplotlib's object API on the Agg canvas: no pyplot state).

Every init keeps one colour across all figures (its position in ``StudyResults.inits``).
"""

from __future__ import annotations

import io
import math

import numpy as np

from cxrbench.report.results import MEAN, StudyResults

DPI = 110
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def colour(res: StudyResults, init: str) -> str:
    """The init's colour (stable across figures)."""
    i = res.inits.index(init) if init in res.inits else len(res.inits)
    return _PALETTE[i % len(_PALETTE)]


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def roc_figure(res: StudyResults, dataset: str, recipe: str, seed: int, max_cols: int = 4) -> bytes | None:
    """ROC curves on the test split, one panel per finding, every init overlaid (AUROC in the legend)."""
    findings = [
        f
        for f in res.findings_of(dataset)
        if any((dataset, recipe, seed, i, f) in res.roc for i in res.inits)
    ]
    if not findings:
        return None
    cols = min(max_cols, len(findings))
    rows = math.ceil(len(findings) / cols)
    fig = _figure(2.9 * cols, 2.75 * rows + 0.3)
    t = res.default_condition()
    sel = t[(t["dataset"] == dataset) & (t["recipe"] == recipe) & (t["seed"] == seed)]
    auc = {(r["init"], r["finding"]): r["auroc"] for r in sel.to_dict(orient="records")}
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, f in enumerate(findings):
        ax = axes[k // cols][k % cols]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#999999")
        for i in res.inits:
            curve = res.roc.get((dataset, recipe, seed, i, f))
            if curve is None:
                continue
            a = auc.get((i, f))
            lab = f"{i} {a:.3f}" if a is not None and np.isfinite(a) else i
            ax.plot(curve[0], curve[1], lw=1.4, color=colour(res, i), label=lab)
        ax.set_title(f.replace("_", " "), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower right", frameon=False, handlelength=1.2)
        if k % cols == 0:
            ax.set_ylabel("sensitivity", fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("1 - specificity", fontsize=8)
    for k in range(len(findings), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(f"{dataset}: ROC curves on the test split", fontsize=10)
    return _png(fig)


NOT_SIGNIFICANT = "#b0b0b0"


def significant(res: StudyResults, row: dict) -> bool:
    """Whether a difference row is significant after adjustment (BH-adjusted p < alpha)."""
    p = row.get("p_adjusted")
    try:
        return p is not None and bool(np.isfinite(float(p))) and float(p) < res.alpha
    except (TypeError, ValueError):
        return False


def forest_figure(res: StudyResults, recipe: str, seed: int) -> bytes | None:
    """AUROC differences versus the reference with CIs: the mean per dataset, then each finding.

    Only significant differences (BH-adjusted p < alpha) are drawn in their init's colour, filled;
    the others are grey and open, so colour means "significant"."""
    t = res.default_condition()
    if res.reference is None or "diff_vs_reference" not in t.columns:
        return None
    sel = t[
        (t["recipe"] == recipe)
        & (t["seed"] == seed)
        & (t["init"] != res.reference)
        & t["diff_vs_reference"].notna()
    ]
    if sel.empty:
        return None
    others = [i for i in res.inits if i != res.reference and i in set(sel["init"])]
    labels, ys, rows = [], [], []
    y = 0
    for d in res.datasets:
        sd = sel[sel["dataset"] == d]
        if sd.empty:
            continue
        for f in [MEAN, *res.findings_of(d)]:
            sf = sd[sd["finding"] == f]
            if sf.empty:
                continue
            labels.append(f"{d}: mean" if f == MEAN else f"    {f.replace('_', ' ')}")
            ys.append(y)
            rows.append((y, f == MEAN, {r["init"]: r for r in sf.to_dict(orient="records")}))
            y += 1
        y += 0.6
    height = 1.2 + 0.2 * len(ys)
    fig = _figure(7.2, min(height, 40))
    ax = fig.subplots()
    k = len(others)
    for y, is_mean, by in rows:
        for j, i in enumerate(others):
            r = by.get(i)
            if r is None:
                continue
            dy = (j - (k - 1) / 2) * 0.22
            d, lo, hi = float(r["diff_vs_reference"]), r.get("diff_lo"), r.get("diff_hi")
            xerr = None
            if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                xerr = [[max(d - float(lo), 0)], [max(float(hi) - d, 0)]]
            sig = significant(res, r)
            ax.errorbar(
                [d],
                [y + dy],
                xerr=xerr,
                fmt="D" if is_mean else "o",
                ms=5 if is_mean else 3.5,
                color=colour(res, i) if sig else NOT_SIGNIFICANT,
                mfc=colour(res, i) if sig else "white",
                elinewidth=1.6 if is_mean else 1.0,
                capsize=2,
            )
    for i in others:
        ax.plot([], [], "o", color=colour(res, i), label=f"{i} - {res.reference} (significant)")
    ax.plot([], [], "o", color=NOT_SIGNIFICANT, mfc="white",
            label=f"not significant (BH p \u2265 {res.alpha:g})")
    ax.axvline(0, color="#444444", lw=0.9)
    ax.set_yticks(ys, labels, fontsize=7.5)
    for lab in ax.get_yticklabels():
        if not lab.get_text().startswith(" "):
            lab.set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlabel(
        f"AUROC difference versus {res.reference} ({int(round(res.ci_level * 100))}% CI)", fontsize=8.5
    )
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    fig.legend(loc="outside lower center", ncols=min(len(others) + 1, 3), fontsize=8, frameon=False)
    return _png(fig)


def curves_figure(res: StudyResults, dataset: str, recipe: str, seed: int) -> bytes | None:
    """Training curves: validation mean AUROC and training loss per epoch, one line per init."""
    c = res.curves
    if c.empty:
        return None
    c = c[(c["dataset"] == dataset) & (c["recipe"] == recipe) & (c["seed"] == seed)]
    if c.empty:
        return None
    fig = _figure(7.2, 2.6)
    ax1, ax2 = fig.subplots(1, 2)
    for i in res.inits:
        ci = c[c["init"] == i].sort_values("epoch")
        if ci.empty:
            continue
        if ci["val_mean_auroc"].notna().any():
            ax1.plot(
                ci["epoch"], ci["val_mean_auroc"], marker="o", ms=2.5, lw=1.3, color=colour(res, i), label=i
            )
        if "train_loss" in ci and ci["train_loss"].notna().any():
            ax2.plot(ci["epoch"], ci["train_loss"], marker="o", ms=2.5, lw=1.3, color=colour(res, i), label=i)
    ax1.set_title("validation mean AUROC", fontsize=9)
    ax2.set_title("training loss (BCE)", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.grid(color="#eeeeee", lw=0.6)
    ax1.legend(fontsize=7, frameon=False)
    fig.suptitle(f"{dataset}: training", fontsize=10)
    return _png(fig)


def external_figure(res: StudyResults, recipe: str, seed: int) -> bytes | None:
    """Heat maps of the external-validation matrix (mean AUROC), one per init."""
    e = res.default_external()
    if e.empty:
        return None
    e = e[(e["recipe"] == recipe) & (e["seed"] == seed)]
    inits = [i for i in res.inits if i in set(e["init"])]
    if not inits:
        return None
    trains = [d for d in res.datasets if d in set(e["train_dataset"])]
    tests = [d for d in res.datasets if d in set(e["test_dataset"]) | set(trains)]
    t = res.default_condition()
    internal = {
        (r["dataset"], r["init"]): r["auroc"]
        for r in t[(t["recipe"] == recipe) & (t["seed"] == seed) & (t["finding"] == MEAN)].to_dict(
            orient="records"
        )
    }
    fig = _figure(min(3.2 * len(inits) + 0.8, 14), 0.45 * len(trains) + 1.6)
    axes = fig.subplots(1, len(inits), squeeze=False)[0]
    look = {
        (r["init"], r["train_dataset"], r["test_dataset"]): r["auroc"] for r in e.to_dict(orient="records")
    }
    im = None
    for ax, i in zip(axes, inits, strict=True):
        m = np.full((len(trains), len(tests)), np.nan)
        for a, da in enumerate(trains):
            for b, db in enumerate(tests):
                m[a, b] = internal.get((da, i), np.nan) if da == db else look.get((i, da, db), np.nan)
        im = ax.imshow(m, vmin=0.5, vmax=1.0, cmap="viridis")
        for a in range(len(trains)):
            for b in range(len(tests)):
                if np.isfinite(m[a, b]):
                    ax.text(
                        b,
                        a,
                        f"{m[a, b]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[a, b] < 0.8 else "black",
                    )
        ax.set_xticks(range(len(tests)), tests, rotation=45, ha="right", fontsize=7.5)
        ax.set_yticks(range(len(trains)), trains, fontsize=7.5)
        ax.set_title(i, fontsize=9)
        ax.set_xlabel("tested on", fontsize=8)
    axes[0].set_ylabel("trained on", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="mean AUROC")
    return _png(fig)
