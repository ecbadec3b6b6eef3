"""Sections of the model card that read a run's analysis files: the label coding of its index (a csv
source's mapping included), small-sample marks on the metrics, the subgroup gaps (``subgroups.json``)
and the calibration (``calibration.json``), each as Markdown lines; and the architecture's name
without a pretrained tag when the network was initialized at random."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cxrbench.common.fileio import read_json_or_none
from cxrbench.common.layout import CACHE_MANIFEST, CALIBRATION_FILE, SUBGROUPS_FILE, index_report_path

MIN_COUNT = 10  # fewer positive or negative test images: the small-sample mark
SMALL = "\u2020"


def arch_name(meta: dict[str, Any]) -> str:
    """The timm architecture, without the pretrained tag (``test_vit.r160_in1k`` -> ``test_vit``) when
    the network was not initialized from pretrained weights (a tag would suggest weights it never had)."""
    arch = str(meta.get("arch") or "?")
    return arch.split(".", 1)[0] if meta.get("family") == "random" else arch


def label_definitions(config: dict[str, Any]) -> list[str]:
    """The label coding sentences of the run's index (``index.report.json`` beside the index its cache
    was built from; a csv source's mapping is spelt out there), or [] when it is not on this machine."""
    from cxrbench.common.fileio import read_json

    cache = (config.get("cache") or {}).get("path")
    if not cache:
        return []
    manifest = read_json_or_none(Path(cache) / CACHE_MANIFEST)
    index = ((manifest or {}).get("source") or {}).get("index") if isinstance(manifest, dict) else None
    if not index or not index_report_path(index).is_file():
        return []
    try:
        report = read_json(index_report_path(index))
    except Exception:  # an unreadable report: the card says less, the export goes on
        return []
    text = report.get("label_definition") if isinstance(report, dict) else None
    return [str(text)] if text else []


def small_mark(entry: dict[str, Any]) -> str:
    """``†`` when a finding has fewer than :data:`MIN_COUNT` positive or negative test images."""
    n, pos = entry.get("n"), entry.get("n_positive")
    if not isinstance(n, int | float) or not isinstance(pos, int | float):
        return ""
    return f" {SMALL}" if min(pos, n - pos) < MIN_COUNT else ""


def small_note(per_finding: dict[str, Any]) -> list[str]:
    few = [f for f, e in per_finding.items() if small_mark(e)]
    if not few:
        return []
    return [
        "",
        f"{SMALL} fewer than {MIN_COUNT} positive or negative test images ({', '.join(few)}): their AUROC "
        "and CI are unreliable, and so is the mean over them.",
    ]


def _f(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _ci(m: Any) -> str:
    if not isinstance(m, dict):
        return "n/a"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    return _f(m.get("value")) + (f" ({_f(lo)}-{_f(hi)})" if lo is not None and hi is not None else "")


def subgroup_lines(split_dir: Path) -> list[str]:
    """The largest AUROC gap per variable and finding (``subgroups.json``), or []."""
    doc = read_json_or_none(split_dir / SUBGROUPS_FILE)
    if not isinstance(doc, dict):
        return []
    gaps = [g for g in doc.get("gaps") or [] if g.get("metric") == "auroc"]
    st = doc.get("settings") or {}
    lines = [
        "",
        f"Subgroups ({', '.join(st.get('variables') or [])}; fewer than {st.get('min_positives', '?')} "
        "positives or negatives: left out of the gaps). Largest AUROC gap per variable:",
        "",
        "| finding | variable | highest | lowest | gap (CI) | p (Bonferroni) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for g in gaps:
        if g.get("gap") is None or not math.isfinite(float(g["gap"])):
            lines.append(f"| {g['finding']} | {g['variable']} | | | {g.get('note') or 'not estimable'} | |")
            continue
        lines.append(
            f"| {g['finding']} | {g['variable']} | {g['high_group']} ({_f(g['high'])}) | {g['low_group']} "
            f"({_f(g['low'])}) | {_f(g['gap'])} ({_f(g.get('gap_lo'))}-{_f(g.get('gap_hi'))}) | "
            f"{_f(g.get('p_bonferroni'))} |"
        )
    return lines


def calibration_lines(split_dir: Path) -> list[str]:
    """ECE and Brier with CIs, slope and intercept (unstable ones marked) per finding, before and after
    recalibration, and the recalibration warnings (``calibration.json``), or []."""
    doc = read_json_or_none(split_dir / CALIBRATION_FILE)
    if not isinstance(doc, dict):
        return []
    st = doc.get("settings") or {}
    lines = [
        "",
        f"Calibration ({st.get('n_bins', '?')} equal-mass bins"
        + (
            f"; {st['recalibrate']} recalibration fitted on {st.get('recalibration_fitted_on')}"
            if st.get("recalibrate")
            else ""
        )
        + "):",
        "",
        "| finding | probabilities | ECE (CI) | Brier (CI) | slope | intercept |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    unstable = False
    for f, e in (doc.get("per_finding") or {}).items():
        for stage, block in (("as predicted", e), ("recalibrated", e.get("recalibrated"))):
            if not isinstance(block, dict):
                continue
            mark = f" {SMALL}" if block.get("unstable") else ""
            unstable = unstable or bool(mark)
            lines.append(
                f"| {f if stage == 'as predicted' else ''} | {stage} | {_ci(block.get('ece'))} | "
                f"{_ci(block.get('brier'))} | {_f(block.get('slope'), 2)}{mark} | "
                f"{_f(block.get('intercept'), 2)}{mark} |"
            )
    if unstable:
        lines += [
            "",
            f"{SMALL} slope and intercept unstable (no convergence, an implausible value, or fewer than "
            "10 positives or negatives): not a calibration measure.",
        ]
    lines += [f"- warning: {w}" for w in doc.get("warnings") or []]
    return lines
