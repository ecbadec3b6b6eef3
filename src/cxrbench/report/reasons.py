"""The report section "Right for the right reasons?": per dataset, the metadata-only shortcut
baseline against every image model, the largest subgroup gaps and underdiagnosis, calibration
(with a reliability diagram), the saliency gallery of the best initialization and, beside it, the
saliency scored against the boxes and masks (pointing game, energy, IoU and hit against chance, inits
against each other; :mod:`cxrbench.report.localization`); the operating points of external
validation. Rendered from :class:`~cxrbench.report.results.Analyses` with the
renderers of :mod:`cxrbench.report.subgroups`, :mod:`~cxrbench.report.calibration`,
:mod:`~cxrbench.report.shortcut` and :mod:`~cxrbench.report.saliency`.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from cxrbench.report import html as H
from cxrbench.report import markdown as M
from cxrbench.report.results import StudyResults


def _first(df: pd.DataFrame, dataset: str, res: StudyResults) -> pd.DataFrame:
    """The rows of ``dataset``, first recipe and first seed (the analyses shown in the report)."""
    if df.empty or "dataset" not in df.columns:
        return df.iloc[0:0]
    sel = df[(df["dataset"] == dataset) & (df["recipe"] == res.recipes[0])]
    if "seed" in sel.columns:
        sel = sel[sel["seed"] == res.seeds[0]]
    return sel


def _localization(loc: pd.DataFrame, tests: pd.DataFrame, dataset: str, add: Callable, alpha: float) -> None:
    """Saliency scored against the regions (per adaptation method), and the inits against each other."""
    from cxrbench.report.localization import localization_table, localization_tests_table

    for adaptation, g in loc.groupby("adaptation", sort=False):
        how = "" if adaptation == "full" else f" ({adaptation})"
        add(localization_table(g, caption=f"{dataset}{how}: is the saliency on the finding? Maps against the "
                                          "boxes and masks"))
        t = tests[tests["adaptation"] == adaptation] if len(tests) else tests
        if len(t):
            add(localization_tests_table(t, caption=f"{dataset}{how}: localization, init against init",
                                         alpha=alpha))


def reasons_section(res: StudyResults, html_parts: list[str], md_parts: list[str],
                    toc: list[tuple[str, str, int]], fig: Callable, figures: dict[str, bytes]) -> None:
    """Append the section to the report (nothing when no analysis result exists)."""
    from cxrbench.report.calibration import calibration_table, operating_table, reliability_figure
    from cxrbench.report.saliency import gallery_html, gallery_markdown
    from cxrbench.report.shortcut import shortcut_table
    from cxrbench.report.subgroups import gap_table, subgroup_table, underdiagnosis_table

    a = res.analyses
    kinds = ("subgroups", "calibration", "shortcut", "operating")
    if all(getattr(a, k).empty for k in (*kinds, "localization")) and not a.examples:
        return
    toc.append(("reasons", "Right for the right reasons?", 1))
    html_parts.append('<h2 id="reasons">Right for the right reasons?</h2>')
    md_parts.append("## Right for the right reasons?\n")
    seed_note = (f"Seed {res.seeds[0]}, {res.recipes[0]}, all labels; every seed's subgroup and calibration "
                 "numbers are in results.csv." if len(res.seeds) > 1 or len(res.recipes) > 1 else "")
    if seed_note:
        html_parts.append(f'<p class="note">{H.esc(seed_note)}</p>')
        md_parts.append(f"*{seed_note}*\n")

    def add(table) -> None:
        html_parts.append(H.table_html(table))
        md_parts.append(M.table_md(table, bold_best=False))

    for d in res.datasets:
        sc = a.shortcut[a.shortcut["dataset"] == d] if len(a.shortcut) else a.shortcut
        gaps, under = _first(a.gaps, d, res), _first(a.underdiagnosis, d, res)
        cal, sub = _first(a.calibration, d, res), _first(a.subgroups, d, res)
        loc, loc_tests = _first(a.localization, d, res), _first(a.localization_tests, d, res)
        if sc.empty and gaps.empty and cal.empty and loc.empty and d not in a.examples:
            continue
        sec = H.slug(f"reasons-{d}")
        toc.append((sec, d, 2))
        html_parts.append(f'<h3 id="{sec}">{H.esc(d)}</h3>')
        md_parts.append(f"### {d}\n")
        if len(sc):
            add(shortcut_table(sc, caption=f"{d}: image models versus the metadata-only shortcut"))
        for init in res.inits:
            g = gaps[gaps["init"] == init] if len(gaps) else gaps
            if len(g):
                add(gap_table(g, alpha=res.alpha,
                              caption=f"{d}, {init}: largest AUROC gaps between subgroups"))
            u = under[under["init"] == init] if len(under) else under
            if len(u):
                add(underdiagnosis_table(
                    u, caption=f"{d}, {init}: underdiagnosis (a finding called 'no finding')"))
            c = cal[cal["init"] == init] if len(cal) else cal
            if len(c):
                add(calibration_table(c, caption=f"{d}, {init}: calibration per finding"))
        s = sub[sub["init"] == res.inits[0]] if len(sub) else sub
        if len(s):  # the full per-subgroup tables, folded away (HTML) / of the first init (Markdown)
            first = res.inits[0]
            inner = "".join(H.table_html(subgroup_table(s, f, caption=f"{d}, {first}: {f} per subgroup"))
                            for f in dict.fromkeys(s["finding"]))
            html_parts.append(f"<details><summary>{H.esc(d)}: every subgroup ({H.esc(first)})</summary>"
                              f"{inner}</details>")
        rel = _first(a.reliability, d, res)
        if len(rel):
            best = a.examples[d].attrs.get("init") if d in a.examples else res.inits[0]
            r = rel[rel["init"] == best]
            png, path = fig(f"reliability-{d}.png", reliability_figure(r) if len(r) else None)
            cap = (f"{d}: reliability diagram of {best} (equal-mass bins; the diagonal is perfect "
                   "calibration).")
            html_parts.append(H.figure_html(png, cap, f"reliability {d}"))
            md_parts.append(M.figure_md(path, cap))
        if d in a.examples and len(a.examples[d]):
            ex = a.examples[d]
            cap = (f"{d}: the top true and false positives of {ex.attrs.get('init', '')} on the test split "
                   "with Grad-CAM overlays (thumbnails).")
            html_parts.append(gallery_html(ex, caption=cap))
            text, files = gallery_markdown(ex, folder=f"figures/saliency-{d}", caption=cap)
            md_parts.append(text)
            figures.update({p.removeprefix("figures/"): png for p, png in files.items()})
        if len(loc):
            _localization(loc, loc_tests, d, add, res.alpha)
    if len(a.operating):
        op = a.operating
        for (train, test, init), g in op.groupby(["train_dataset", "test_dataset", "init"], sort=False):
            add(operating_table(g, caption=f"Trained on {train}, tested on {test} ({init}): the source's "
                                           "threshold against the target's own optimum"))
    for note in a.notes:
        html_parts.append(f'<p class="note">{H.esc(note)}</p>')
        md_parts.append(f"*{note}*\n")
