"""Rendering the study report: ``index.html`` (self-contained), ``report.md``, ``results.csv`` and
``figures/``.

Build a :class:`~cxrbench.report.results.StudyResults` (from a study folder with
:func:`cxrbench.study.gather.gather_results`, or by hand) and call :func:`write_report`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrbench.common.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from cxrbench.common.layout import REPORT_HTML, REPORT_MARKDOWN, RESULTS_CSV
from cxrbench.common.provenance import now_iso
from cxrbench.report import html as H
from cxrbench.report import markdown as M
from cxrbench.report import plots, tables
from cxrbench.report.methods import methods_text
from cxrbench.report.reasons import reasons_section
from cxrbench.report.results import POOLED, StudyResults
from cxrbench.report.text import summary_sentences


def _suffix(res: StudyResults, recipe: str, seed: int) -> str:
    return "" if len(res.matrix_keys()) <= 1 else f"-{recipe}-s{seed}"


def write_report(res: StudyResults, out: str | os.PathLike) -> dict[str, Path]:
    """Render the report into ``out``; returns the paths written (``html``, ``markdown``, ``csv``)."""
    out = Path(out)
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, bytes] = {}

    def fig(name: str, png: bytes | None) -> tuple[bytes | None, str | None]:
        if not png:
            return None, None
        figures[name] = png
        return png, f"figures/{name}"

    html_parts: list[str] = []
    md_parts: list[str] = [f"# {res.display_title}\n"]
    toc: list[tuple[str, str, int]] = []

    _opening(res, html_parts, md_parts)

    for recipe, seed in res.matrix_keys():
        sfx = _suffix(res, recipe, seed)
        # figures of single runs (ROC, training curves, external validation) show the first seed
        run_seed = res.seeds[0] if seed == POOLED else seed
        where = f" ({recipe}, pooled over seeds)" if seed == POOLED else f" ({recipe}, seed {seed})"
        label = "Results" + (where if sfx else "")
        sec = H.slug(label)
        toc.append((sec, label, 1))
        html_parts.append(f'<h2 id="{sec}">{H.esc(label)}</h2>')
        md_parts.append(f"## {label}\n")
        summary = summary_sentences(res, recipe, seed)
        if summary:
            html_parts.append(
                '<div class="banner info summary">' + " ".join(H.esc(s) for s in summary) + "</div>"
            )
            md_parts.append(" ".join(summary) + "\n")
        mt = tables.main_table(res, recipe, seed)
        html_parts.append(H.table_html(mt))
        md_parts.append(M.table_md(mt))
        for note in res.notes:
            html_parts.append(f'<p class="note">{H.esc(note)}</p>')
            md_parts.append(f"*{note}*\n")
        png, path = fig(f"forest{sfx}.png", plots.forest_figure(res, recipe, seed))
        cap = (
            f"AUROC difference of each initialization versus {res.reference} with "
            f"{int(round(100 * res.ci_level))}% paired-bootstrap CI: mean (diamonds) and per finding; "
            "coloured and filled only where significant after Benjamini-Hochberg adjustment."
        )
        html_parts.append(H.figure_html(png, cap, "forest plot"))
        md_parts.append(M.figure_md(path, cap))
        for d in res.datasets:
            if not res.findings_of(d):
                continue
            dsec = H.slug(f"{d}{sfx}")
            toc.append((dsec, d, 2))
            html_parts.append(f'<h3 id="{dsec}">{H.esc(d)}</h3>')
            md_parts.append(f"### {d}\n")
            ft = tables.finding_table(res, d, recipe, seed)
            html_parts.append(H.table_html(ft))
            md_parts.append(M.table_md(ft))
            small = tables.small_sample_warnings(res, d, recipe, seed)
            if small:
                html_parts.append('<div class="banner warn"><b>Small samples.</b><ul>'
                                  + "".join(f"<li>{H.esc(w)}</li>" for w in small) + "</ul></div>")
                md_parts.append("> **Small samples.**\n" + "".join(f"> - {w}\n" for w in small))
            ot = tables.operating_table(res, d, recipe, seed)
            if ot is not None:
                html_parts.append(H.table_html(ot))
                md_parts.append(M.table_md(ot, bold_best=False))
            pt = tables.pairs_table(res, d, recipe, seed)
            html_parts.append(H.table_html(pt))
            md_parts.append(M.table_md(pt))
            png, path = fig(f"roc-{d}{sfx}.png", plots.roc_figure(res, d, recipe, run_seed))
            cap = f"{d}: ROC curves per finding on the test split; legend: AUROC." + (
                f" Seed {run_seed}." if seed == POOLED else "")
            html_parts.append(H.figure_html(png, cap, f"ROC curves {d}"))
            md_parts.append(M.figure_md(path, cap))
            png, path = fig(f"training-{d}{sfx}.png", plots.curves_figure(res, d, recipe, run_seed))
            cap = f"{d}: validation mean AUROC and training loss per epoch."
            html_parts.append(H.figure_html(png, cap, f"training curves {d}"))
            md_parts.append(M.figure_md(path, cap))
        if not res.external.empty:
            ext_tables = [tables.external_table(res, recipe, run_seed, i) for i in res.inits]
            ext_tables = [t for t in ext_tables if t is not None]
            if ext_tables:
                esec = H.slug(f"external{sfx}")
                toc.append((esec, "External validation", 2))
                html_parts.append(f'<h3 id="{esec}">External validation</h3>')
                md_parts.append("### External validation\n")
                for t in ext_tables:
                    html_parts.append(H.table_html(t))
                    md_parts.append(M.table_md(t))
                png, path = fig(f"external{sfx}.png", plots.external_figure(res, recipe, run_seed))
                cap = "External validation: mean AUROC, trained on the row dataset, tested on the column one."
                html_parts.append(H.figure_html(png, cap, "external validation matrix"))
                md_parts.append(M.figure_md(path, cap))

    _robustness_section(res, html_parts, md_parts, toc, fig)
    reasons_section(res, html_parts, md_parts, toc, fig, figures)

    st = tables.summary_table(res)
    if st is not None:
        toc.append(("datasets", "Datasets", 1))
        html_parts.append('<h2 id="datasets">Datasets</h2>' + H.table_html(st))
        md_parts.append("## Datasets\n\n" + M.table_md(st))
        for d in res.datasets:
            pt = tables.prevalence_table(res, d)
            if pt is not None:
                html_parts.append(
                    f"<details><summary>{H.esc(d)}: prevalence per finding</summary>"
                    f"{H.table_html(pt)}</details>"
                )
                md_parts.append(M.table_md(pt, bold_best=False))

    methods = methods_text(res)
    if methods:
        toc.append(("methods", "Methods", 1))
        html_parts.append(
            '<h2 id="methods">Methods (generated)</h2><div class="methods">'
            + "".join(f"<p>{H.esc(p)}</p>" for p in methods)
            + "</div>"
        )
        md_parts.append("## Methods (generated)\n\n" + "\n\n".join(methods) + "\n")
    toc.append(("provenance", "Provenance", 1))
    pv = tables.provenance_table(res)
    html_parts.append('<h2 id="provenance">Provenance</h2>' + H.table_html(pv))
    md_parts.append("## Provenance\n\n" + M.table_md(pv, bold_best=False))

    created = res.provenance.get("created") or now_iso()
    meta = H.esc(
        f"study {res.name} · generated {created} · config {res.provenance.get('config_hash', 'n/a')}"
        f" · cxrbench {(res.provenance.get('versions') or {}).get('cxrbench', '')}"
    )
    for name, png in figures.items():
        (figdir / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(figdir / name, png)
    paths = {"html": out / REPORT_HTML, "markdown": out / REPORT_MARKDOWN, "csv": out / RESULTS_CSV}
    atomic_write_text(paths["html"], H.page(res.display_title, meta, toc, "".join(html_parts)))
    atomic_write_text(paths["markdown"], "\n".join(md_parts))
    with atomic_path(paths["csv"]) as tmp:
        res.results_csv().to_csv(tmp, index=False, float_format="%.6g")
    return paths


def _opening(res: StudyResults, html_parts: list[str], md_parts: list[str]) -> None:
    """The description and the banners above the results: missing results, index warnings."""
    if res.description:
        html_parts.append(f"<p>{H.esc(res.description)}</p>")
        md_parts.append(res.description + "\n")
    if res.missing:
        shown = ", ".join(res.missing[:12]) + (
            f" and {len(res.missing) - 12} more" if len(res.missing) > 12 else ""
        )
        msg = f"Incomplete study: {len(res.missing)} result(s) missing ({shown}). Tables show what exists."
        html_parts.append(f'<div class="banner warn">{H.esc(msg)}</div>')
        md_parts.append(f"> **{msg}**\n")
    index_warnings = [(d.name, w) for d in res.protocol.datasets for w in d.warnings]
    if index_warnings:  # thin splits, missing images: said where the results are read, not only in a JSON
        items = "".join(f"<li><b>{H.esc(n)}</b>: {H.esc(w)}</li>" for n, w in index_warnings)
        html_parts.append(f'<div class="banner warn"><b>Index warnings.</b><ul>{items}</ul></div>')
        md_parts.append("> **Index warnings.**\n" + "".join(f"> - {n}: {w}\n" for n, w in index_warnings))


def _robustness_section(res: StudyResults, html_parts: list[str], md_parts: list[str],
                        toc: list[tuple[str, str, int]], fig) -> None:
    """"Does the winner hold?": rankings per condition, label-efficiency / noise curves, recipes; then
    "Does the ranking survive tuning?" (with a ``tuning:`` block)."""
    from cxrbench.report import robustness as R
    from cxrbench.report.tuning import tuning_section

    tuning_section(res, html_parts, md_parts, toc, fig)

    rank = R.ranking_table(res)
    adapt = R.adaptation_table(res)
    figures = [(c, R.axis_figure(res, c)) for c in res.axes]
    recipes = R.recipe_table(res)
    if rank is None and recipes is None and adapt is None and not any(png for _, png in figures):
        return
    toc.append(("winner", "Does the winner hold?", 1))
    html_parts.append('<h2 id="winner">Does the winner hold?</h2>')
    md_parts.append("## Does the winner hold?\n")
    for t in (rank, adapt):
        html_parts.append(H.table_html(t))
        md_parts.append(M.table_md(t, bold_best=False))
    captions = {"label_fraction": "Label efficiency: mean AUROC against the share of training patients "
                                  "with labels (log scale; nested, stratified subsets), CI bands; one "
                                  "line style per adaptation method when there are several.",
                "label_noise": "Label noise: mean AUROC against the share of training labels flipped, "
                               "CI bands."}
    for column, png in figures:
        png, path = fig(f"axis-{column}.png", png)
        cap = captions.get(column, f"Mean AUROC against {column}.")
        html_parts.append(H.figure_html(png, cap, column))
        md_parts.append(M.figure_md(path, cap))
    html_parts.append(H.table_html(recipes))
    md_parts.append(M.table_md(recipes, bold_best=False))


def main_table_text(res: StudyResults) -> str:
    """The main table(s) as aligned plain text (what ``cxrbench demo`` prints)."""
    out = []
    for recipe, seed in res.matrix_keys():
        t = tables.main_table(res, recipe, seed)
        parts = [h.split("\n") for h in t.header]
        head = [[p[i] if i < len(p) else "" for p in parts] for i in range(max(map(len, parts)))]
        body = [[c.text + (" <" if "best" in c.style.split() else "") for c in r] for r in t.rows]
        grid = head + body
        widths = [max(len(row[k]) for row in grid) for k in range(len(t.header))]
        lines = [t.caption, ""]
        for n, row in enumerate(grid):
            lines.append(
                "  ".join(
                    c.ljust(w) if k == 0 else c.rjust(w)
                    for k, (c, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
            )
            if n == len(head) - 1:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        lines += ["< best per dataset", *(n.replace("; best per dataset in bold.", ".") for n in t.notes)]
        out.append("\n".join(lines))
    return "\n\n".join(out)
