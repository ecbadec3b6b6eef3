"""The report's tables as plain data (caption, header, rows of cells), rendered by html.py and markdown.py.

A cell is text plus an optional style: ``best`` (the highest AUROC of a row), ``ref`` (the
reference init), ``sig`` (significant after BH adjustment), ``muted`` (not available).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.report.results import MEAN, POOLED, StudyResults, stars
from cxrbench.report.weak import (
    MIN_POSITIVES,
    SMALL,
    counts_of,
    fmt_mdd,
    is_deterministic,
    mean_small_reasons,
    not_significant,
    power_lines,
    small_sample_reasons,
)

DASH = "\u2013"
NA = "n/a"


@dataclass
class Cell:
    text: str
    style: str = ""
    title: str = ""


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    css: str = ""


def _f(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return NA
    return f"{v:.{digits}f}" if math.isfinite(v) else NA


def fmt_auroc(row: pd.Series | dict | None, digits: int = 3) -> str:
    """``0.842 (0.831\u20130.853)`` or n/a."""
    if row is None:
        return NA
    a = _f(row.get("auroc"), digits)
    if a == NA:
        return NA
    lo, hi = _f(row.get("auroc_lo"), digits), _f(row.get("auroc_hi"), digits)
    return a if lo == NA or hi == NA else f"{a} ({lo}{DASH}{hi})"


def fmt_p(p: Any) -> str:
    """``<0.001``, ``0.004``, ``0.31`` or empty."""
    try:
        v = float(p)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(v):
        return ""
    if v < 0.001:
        return "<0.001"
    return f"{v:.3f}" if v < 0.1 else f"{v:.2f}"


def fmt_diff(row: pd.Series | dict) -> str:
    """``+0.012 (0.004\u20130.020)``."""
    d = row.get("diff_vs_reference")
    if d is None or not np.isfinite(float(d)):
        return ""
    lo, hi = row.get("diff_lo"), row.get("diff_hi")
    ci = f" ({float(lo):+.3f}{DASH}{float(hi):+.3f})" if lo is not None and np.isfinite(float(lo)) else ""
    return f"{float(d):+.3f}{ci}"


def _select(res: StudyResults, recipe: str, seed: int | str) -> pd.DataFrame:
    t = res.default_condition()
    return t[(t["recipe"] == recipe) & (t["seed"] == seed)]


def _lookup(t: pd.DataFrame) -> dict[tuple[str, str, str], dict]:
    return {(r["dataset"], r["init"], r["finding"]): r for r in t.to_dict(orient="records")}


def _init_header(res: StudyResults, label: str) -> str:
    """``label`` over ``init name · reference`` (a newline: two lines in HTML, a space in Markdown)."""
    name = res.init_names.get(label)
    sub = [name] if name and name != label else []
    if label == res.reference:
        sub.append("reference")
    return label + ("\n" + " · ".join(sub) if sub else "")


def _auroc_cell(res: StudyResults, row: dict | None, best: bool, ref: bool) -> Cell:
    if row is None:
        return Cell(NA, "muted", "no result")
    text = fmt_auroc(row)
    sd = row.get("seed_sd")
    if is_deterministic(row):
        text += " (deterministic)"
    elif sd is not None and np.isfinite(float(sd)):
        text += f" sd {float(sd):.3f}"
    p_adj = row.get("p_adjusted")
    mark = "" if ref else stars(p_adj if p_adj is not None else float("nan"), res.alpha)
    title = ""
    if (
        not ref
        and row.get("p_vs_reference") is not None
        and np.isfinite(float(row.get("p_vs_reference") or np.nan))
    ):
        title = (
            f"vs {res.reference}: diff {fmt_diff(row)}, p {fmt_p(row.get('p_vs_reference'))}, "
            f"BH-adjusted {fmt_p(p_adj)}"
        ) + (f"; detectable at 80% power: {fmt_mdd(row)}" if fmt_mdd(row) else "")
    worse = (
        mark and float(row.get("diff_vs_reference") if row.get("diff_vs_reference") is not None else 0) < 0
    )
    sig = ("sigworse" if worse else "sig") if mark else ""
    style = " ".join(x for x in ("best" if best else "", "ref" if ref else "", sig) if x)
    return Cell(text + (f" {mark}" if mark else ""), style, title)


def main_table(res: StudyResults, recipe: str, seed: int) -> Table:
    """Mean AUROC (95% CI) per dataset x init, marks for BH-adjusted p vs the reference, best in bold."""
    t = _select(res, recipe, seed)
    look = _lookup(t[t["finding"] == MEAN])
    header = ["dataset", "test images", "findings"] + [_init_header(res, i) for i in res.inits]
    rows: list[list[Cell]] = []
    for d in res.datasets:
        cells = [look.get((d, i, MEAN)) for i in res.inits]
        if all(c is None for c in cells):
            continue
        vals = [
            float(c["auroc"])
            if c is not None and c.get("auroc") is not None and np.isfinite(float(c["auroc"]))
            else -1.0
            for c in cells
        ]
        top = max(vals)
        any_row = next(c for c in cells if c is not None)
        n = any_row.get("n")
        nf = any_row.get("n_findings")
        row = [
            Cell(d),
            Cell(f"{int(n):,}" if n is not None and np.isfinite(float(n)) else NA),
            Cell(str(int(nf)) if nf is not None and np.isfinite(float(nf)) else str(len(res.findings_of(d)))),
        ]
        row += [
            _mark_small(_auroc_cell(res, c, v == top and v >= 0, i == res.reference),
                        mean_small_reasons(t, d, i))
            for c, v, i in zip(cells, vals, res.inits, strict=True)
        ]
        rows.append(row)
    ci = int(round(res.ci_level * 100))
    notes = [pooled_note(res, t) if seed == POOLED else
             f"Mean AUROC over each run's findings, with {ci}% bootstrap confidence interval; "
             "best per dataset in bold."]
    if any(SMALL in c.text for r in rows for c in r):
        notes.append(f"{SMALL}: the mean includes a finding with fewer than {MIN_POSITIVES} positive or "
                     "negative test images (which ones: the dataset's table below); read it with care.")
    if res.reference:
        notes.append(
            f"Marks: Benjamini-Hochberg-adjusted p (over every dataset x init test of this table) of the "
            f"paired comparison with {res.reference}: * < {res.alpha:g}, ** < 0.01, *** < 0.001. "
            "Where an init uses fewer findings (domain arms), the test is over the findings both share."
        )
        notes += power_lines(res, t)
    title = "Main table: mean AUROC per dataset and initialization"
    if seed == POOLED:
        title += f" ({recipe}, pooled over {_n_seeds(t)} seeds)" if len(res.recipes) > 1 else \
            f" (pooled over {_n_seeds(t)} seeds)"
    elif len(res.matrix_keys()) > 1:
        title += f" ({recipe}, seed {seed})"
    return Table(title, header, rows, notes, css="main")


def _mark_small(cell: Cell, reasons: list[str]) -> Cell:
    if not reasons:
        return cell
    title = "; ".join(reasons) + (f" | {cell.title}" if cell.title else "")
    return Cell(cell.text + f" {SMALL}", cell.style, title)


def small_sample_warnings(res: StudyResults, dataset: str, recipe: str, seed: int) -> list[str]:
    """One line per finding whose test counts are small, and per AUROC whose CI touches 0 or 1."""
    t = _select(res, recipe, seed)
    look = _lookup(t[t["dataset"] == dataset])
    lines = []
    for f in res.findings_of(dataset):
        rows = [look.get((dataset, i, f)) for i in res.inits]
        counts = counts_of(rows)
        few = small_sample_reasons(None, counts)
        if few:
            lines.append(f"{f}: {' and '.join(few)}; its AUROC and CI are unreliable")
        edge = [i for i, r in zip(res.inits, rows, strict=True)
                if r is not None and small_sample_reasons(r, None)]
        if edge:
            lines.append(f"{f}: the CI of {', '.join(edge)} reaches 0 or 1; read it as a lower bound on "
                         "the uncertainty")
    return lines


def _n_seeds(t: pd.DataFrame) -> str:
    if "deterministic" in t.columns:
        t = t[[not is_deterministic(r) for r in t.to_dict(orient="records")]]
    n = t["n_seeds"].dropna().astype(int).unique() if "n_seeds" in t.columns else []
    return "/".join(str(x) for x in sorted(n)) or "?"


def pooled_note(res: StudyResults, t: pd.DataFrame) -> str:
    """What a pooled cell is, and which variance each initialization's seed SD covers."""
    ci = int(round(res.ci_level * 100))
    text = (f"Mean over the {_n_seeds(t)} training seeds of each run's AUROC, with the {ci}% two-level "
            "bootstrap confidence interval (seeds and patients resampled; the same patient resamples "
            "for every initialization, so the tests are paired) and the seed-to-seed SD (sd); best per "
            "dataset in bold.")
    records = t.to_dict(orient="records")
    if any(is_deterministic(r) for r in records):
        text += (" (deterministic): a method whose runs do not depend on the seed (e.g. kNN on fixed "
                 "weights) ran once; its CI is the one-level bootstrap over test patients.")
    covers = {r["init"]: r.get("seed_sd_covers") for r in records
              if isinstance(r.get("seed_sd_covers"), str) and r.get("seed_sd_covers")
              and not is_deterministic(r)}
    if covers:
        text += " The seed SD and CI cover: " + "; ".join(f"{i}: {c}" for i, c in covers.items()) + "."
    return text


def finding_table(res: StudyResults, dataset: str, recipe: str, seed: int | str) -> Table:
    """Per-finding AUROC (CI) per init, the finding's labelled test images (positives / negatives),
    small-sample marks, and p vs the reference (raw and BH over the findings)."""
    t = _select(res, recipe, seed)
    t = t[t["dataset"] == dataset]
    look = _lookup(t)
    others = [i for i in res.inits if i != res.reference] if res.reference else []
    header = ["finding", "test images\n(pos / neg)"] + [_init_header(res, i) for i in res.inits]
    header += [f"p {i}\nvs {res.reference} (BH)" for i in others]
    rows = []
    for f in [*res.findings_of(dataset), MEAN]:
        cells = [look.get((dataset, i, f)) for i in res.inits]
        if all(c is None for c in cells):
            continue
        vals = [
            float(c["auroc"])
            if c is not None and c.get("auroc") is not None and np.isfinite(float(c["auroc"]))
            else -1.0
            for c in cells
        ]
        top = max(vals)
        counts = counts_of(cells)
        if f == MEAN:
            n_text = next((f"{int(c['n']):,}" for c in cells if c is not None and c.get("n") is not None
                           and np.isfinite(float(c["n"]))), "")
        else:
            n_text = f"{counts[0]:,} ({counts[1]:,} / {counts[0] - counts[1]:,})" if counts else ""
        row = [Cell(f, "mean" if f == MEAN else ""), Cell(n_text)]
        row += [
            _mark_small(_auroc_cell(res, c, v == top and v >= 0, i == res.reference),
                        small_sample_reasons(c, counts if f != MEAN else None)
                        + (mean_small_reasons(t, dataset, i) if f == MEAN else []))
            for c, v, i in zip(cells, vals, res.inits, strict=True)
        ]
        for i in others:
            c = look.get((dataset, i, f))
            if c is None or not fmt_p(c.get("p_vs_reference")):
                row.append(Cell("", "muted"))
            else:
                mdd = f"; detects \u2265{fmt_mdd(c)}" if fmt_mdd(c) and not_significant(c, res.alpha) else ""
                row.append(Cell(f"{fmt_p(c.get('p_vs_reference'))} ({fmt_p(c.get('p_adjusted'))}){mdd}",
                                _sig_style(c, res.alpha), fmt_diff(c)))
        rows.append(row)
    notes = [
        "Test images: those labelled for the finding (unknown labels left out), the n of its AUROC; "
        f"{SMALL}: fewer than {MIN_POSITIVES} positives or negatives, or a CI reaching 0 or 1 (see below)."
    ]
    if others:
        notes.append(
            "p: paired test versus the reference on the same bootstrap resamples; in brackets "
            "Benjamini-Hochberg-adjusted over the findings of this dataset (mean row: over the main table). "
            "Beside a result that is not significant: the smallest difference this test set detects with "
            "80% power at the 5% level (binormal variances, the observed correlation of the paired AUROCs; "
            "docs/statistics.md): a smaller true difference could not be told apart."
        )
    if seed == POOLED:
        notes.insert(0, pooled_note(res, t))
    return Table(f"{dataset}: AUROC per finding" + (" (pooled over seeds)" if seed == POOLED else ""),
                 header, rows, notes)


_THRESHOLD_WORDS = {"val": "the validation split's Youden threshold",
                    "test": "the test split's own Youden threshold (optimistic)",
                    "fixed": "the fixed threshold"}


def operating_table(res: StudyResults, dataset: str, recipe: str, seed: int) -> Table | None:
    """Sensitivity / specificity per finding and init at the evaluation's threshold."""
    t = _select(res, recipe, seed)
    t = t[t["dataset"] == dataset]
    if "sensitivity" not in t.columns or t["sensitivity"].isna().all():
        return None
    look = _lookup(t)
    rows = []
    for f in [*res.findings_of(dataset), MEAN]:
        cells = [look.get((dataset, i, f)) for i in res.inits]
        if all(c is None for c in cells):
            continue
        row = [Cell(f, "mean" if f == MEAN else "")]
        for c in cells:
            sens, spec = (_f(c.get("sensitivity"), 2), _f(c.get("specificity"), 2)) if c else (NA, NA)
            row.append(Cell(NA, "muted") if sens == NA and spec == NA else Cell(f"{sens} / {spec}"))
        rows.append(row)
    ev = res.protocol.evaluation
    where = " or ".join(_THRESHOLD_WORDS.get(x, x) for x in (ev.threshold if ev else ("val",)))
    return Table(f"{dataset}: sensitivity / specificity at {where}",
                 ["finding"] + [_init_header(res, i) for i in res.inits], rows,
                 ["Point estimates on the test split (their bootstrap CIs are in each run's metrics.json); "
                  "mean row: the mean over findings."])


def _sig_style(row: dict, alpha: float) -> str:
    if not stars(row.get("p_adjusted"), alpha):
        return ""
    d = row.get("diff_vs_reference")
    return "sigworse" if d is not None and float(d) < 0 else "sig"


def pairs_table(res: StudyResults, dataset: str, recipe: str, seed: int) -> Table | None:
    """All-pairs comparisons of the mean AUROC on one dataset (when no reference is set)."""
    p = res.pairs
    if p.empty:
        return None
    p = p[(p["dataset"] == dataset) & (p["recipe"] == recipe) & (p["seed"] == seed) & (p["finding"] == MEAN)]
    if p.empty:
        return None
    rows = [
        [
            Cell(r["init_a"]),
            Cell(r["init_b"]),
            Cell(
                fmt_diff({"diff_vs_reference": r["diff"], "diff_lo": r["diff_lo"], "diff_hi": r["diff_hi"]})
            ),
            Cell(fmt_p(r["p"])),
            Cell(fmt_p(r.get("p_adjusted"))),
            Cell(fmt_mdd(r), "muted"),
        ]
        for r in p.to_dict(orient="records")
    ]
    return Table(
        f"{dataset}: pairwise differences of the mean AUROC",
        ["A", "B", "A - B (CI)", "p", "p (BH)", "detectable\n(80% power)"], rows,
        ["detectable: the smallest difference this test set detects with 80% power at the 5% level; a "
         "non-significant pair whose true difference is smaller could not be told apart."])


def external_table(res: StudyResults, recipe: str, seed: int, init: str) -> Table | None:
    """Mean AUROC of models trained on the row dataset and tested on the column dataset."""
    e = res.default_external()
    if e.empty:
        return None
    e = e[(e["recipe"] == recipe) & (e["seed"] == seed) & (e["init"] == init)]
    if e.empty:
        return None
    trains = [d for d in res.datasets if d in set(e["train_dataset"])]
    tests = [d for d in res.datasets if d in set(e["test_dataset"]) | set(trains)]
    internal = _lookup(_select(res, recipe, seed)[lambda t: t["finding"] == MEAN])
    look = {(r["train_dataset"], r["test_dataset"]): r for r in e.to_dict(orient="records")}
    rows = []
    for a in trains:
        row = [Cell(a)]
        for b in tests:
            if a == b:
                c = internal.get((a, init, MEAN))
                row.append(Cell(fmt_auroc(c), "ref", "internal test split") if c else Cell(NA, "muted"))
            else:
                c = look.get((a, b))
                row.append(
                    Cell(
                        fmt_auroc(c) + (f" [{int(c['n_findings'])}]" if c and c.get("n_findings") else ""),
                        "",
                        f"{int(c['n_findings'])} shared findings" if c else "",
                    )
                    if c
                    else Cell("", "muted")
                )
        rows.append(row)
    return Table(
        f"External validation ({init}): trained on row, tested on column",
        ["trained on \\ tested on", *tests],
        rows,
        [
            "Mean AUROC (CI) over the findings both datasets share [their number]; the diagonal is the "
            "internal test split (all of the run's findings)."
        ],
    )


def summary_table(res: StudyResults) -> Table | None:
    """Images and patients per split for every dataset."""
    s = res.summaries
    if s.empty:
        return None
    rows = []
    for d in res.datasets:
        sd = s[s["dataset"] == d]
        if sd.empty:
            continue
        by = {r["split"]: r for r in sd.to_dict(orient="records")}
        cells = [Cell(d)]
        for split in ("train", "val", "test"):
            r = by.get(split)
            cells.append(Cell(f"{int(r['images']):,} / {int(r['patients']):,}" if r else "0"))
        total_i = int(sd["images"].sum())
        total_p = int(sd["patients"].sum())
        cells.append(Cell(f"{total_i:,} / {total_p:,}"))
        cells.append(Cell(str(len(res.findings_of(d)) or "")))
        rows.append(cells)
    return Table(
        "Datasets: images / patients per split",
        ["dataset", "train", "val", "test", "total", "findings"],
        rows,
        ["Splits are patient-level (no patient in two splits); counts after view and label filters."],
    )


def prevalence_table(res: StudyResults, dataset: str) -> Table | None:
    """Positives and prevalence per finding and split."""
    p = res.prevalence
    if p.empty:
        return None
    p = p[p["dataset"] == dataset]
    if p.empty:
        return None
    splits = [s for s in ("train", "val", "test") if s in set(p["split"])]
    look = {(r["finding"], r["split"]): r for r in p.to_dict(orient="records")}
    findings = list(dict.fromkeys(p["finding"]))
    rows = []
    for f in findings:
        row = [Cell(f)]
        for s in splits:
            r = look.get((f, s))
            row.append(
                Cell(f"{int(r['n_positive']):,} ({100 * r['prevalence']:.1f}%)" if r and r["n"] else NA)
            )
        rows.append(row)
    return Table(f"{dataset}: positives (prevalence) per split", ["finding", *splits], rows)


def provenance_table(res: StudyResults) -> Table:
    """Key / value rows: versions, commit, config hash, bootstrap, weights."""
    rows: list[list[Cell]] = []
    prov = res.provenance
    for key in ("config_hash", "git_commit", "created", "host", "study_config"):
        if prov.get(key) is not None:
            rows.append([Cell(key.replace("_", " ")), Cell(str(prov[key]))])
    boot = prov.get("bootstrap") or {}
    if boot:
        rows.append([Cell("bootstrap"), Cell(", ".join(f"{k} {v}" for k, v in boot.items()))])
    for k, v in (prov.get("versions") or {}).items():
        rows.append([Cell(f"version: {k}"), Cell(str(v))])
    for label, w in (prov.get("weights") or {}).items():
        text = f"{w.get('init')}: {w.get('file') or w.get('note', '')}"
        if w.get("sha256"):
            text += f" sha256 {w['sha256']}"
        rows.append([Cell(f"weights: {label}"), Cell(text)])
    return Table("Provenance", ["item", "value"], rows, css="prov")
