""" "Does the ranking survive tuning?": each initialization at the study's default recipe and at the
recipe its tuning chose on the validation split, side by side, with the paired test of tuned against
default per init, the ranking in both, the winner's test where the winner changes, and the validation
score over the search space per init (a figure).

Inputs are :class:`~cxrbench.report.results.StudyResults` frames: the results rows of both recipes
(``tuning`` = ``default`` / ``tuned``), ``tuned`` (each arm's choice), ``tuning`` (every trial) and
``tuning_tests`` (tuned versus default on the same test images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.axes import TUNED
from cxrbench.report import html as H
from cxrbench.report import markdown as M
from cxrbench.report.plots import _figure, _png, colour
from cxrbench.report.results import MEAN, StudyResults
from cxrbench.report.robustness import (
    _is_default,
    _ranked,
    _winner_significant,
    _winner_test,
    condition_table,
)
from cxrbench.report.tables import DASH, NA, Cell, Table, fmt_auroc, fmt_diff, fmt_p

_KEY_WORDS = {
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "layer_decay": "layer-wise lr decay",
    "lora_rank": "LoRA rank",
    "patience": "early-stopping patience",
    "epochs": "epochs",
}


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _groups(res: StudyResults) -> list[tuple[str, str, str, pd.DataFrame]]:
    """(dataset, recipe, adaptation, rows of both recipes) for every group with a tuned result."""
    ct = condition_table(res)
    if ct.empty or "tuning" not in ct.columns or not (ct["tuning"] == TUNED).any():
        return []
    for c in ("label_fraction", "label_noise"):
        if c in ct.columns:
            ct = ct[[_is_default(c, v) for v in ct[c]]]
    if "adaptation" not in ct.columns:
        ct = ct.assign(adaptation="full")
    ct = ct.assign(adaptation=ct["adaptation"].fillna("full"))
    out = []
    for d in res.datasets:
        for r in res.recipes:
            sel = ct[(ct["dataset"] == d) & (ct["recipe"] == r)]
            for m in dict.fromkeys(sel.loc[sel["tuning"] == TUNED, "adaptation"]):
                out.append((d, r, str(m), sel[sel["adaptation"] == m]))
    return out


def _chosen_text(res: StudyResults, d: str, r: str, init: str, m: str) -> str:
    t = res.tuned
    if t.empty:
        return ""
    row = t[(t["dataset"] == d) & (t["recipe"] == r) & (t["init"] == init) & (t["adaptation"] == m)]
    if row.empty:
        return ""
    rec = row.iloc[0].to_dict()
    return ", ".join(
        f"{k.removeprefix('tuned_')} {_value(v)}"
        for k, v in rec.items()
        if k.startswith("tuned_") and v is not None and not (isinstance(v, float) and math.isnan(v))
    )


def _test_cell(res: StudyResults, d: str, r: str, init: str, m: str) -> Cell:
    t = res.tuning_tests
    if t is None or t.empty or "tuning_a" not in t.columns:
        return Cell("", "muted")
    sel = t[
        (t["dataset"] == d)
        & (t["recipe"] == r)
        & (t["init"] == init)
        & (t["adaptation"] == m)
        & (t["finding"] == MEAN)
    ]
    if sel.empty or not isinstance(sel.iloc[0].get("diff"), float):
        return Cell("", "muted")
    row = sel.iloc[0]
    p = row.get("p")
    sig = p is not None and math.isfinite(float(p)) and float(p) < res.alpha
    text = fmt_diff({"diff_vs_reference": row["diff"], "diff_lo": row["diff_lo"], "diff_hi": row["diff_hi"]})
    style = ("sig" if float(row["diff"]) > 0 else "sigworse") if sig else ""
    mdd = row.get("min_detectable_diff")
    power = (
        f"; detects \u2265{float(mdd):.3f}"
        if not sig and mdd is not None and math.isfinite(float(mdd))
        else ""
    )
    return Cell(f"{text}, p {fmt_p(p) or NA}{power}", style)


def tuning_table(res: StudyResults) -> Table | None:
    """Per dataset, recipe and adaptation method: every init at the default and at its tuned recipe
    (mean AUROC with CI and rank), the paired test of tuned against default, and the chosen values."""
    body = []
    for d, r, m, g in _groups(res):
        default, tuned = _ranked(g, {"tuning": "default"}), _ranked(g, {"tuning": TUNED})
        rank_d = {x: k + 1 for k, x in enumerate(default["init"])}
        rank_t = {x: k + 1 for k, x in enumerate(tuned["init"])}
        for init in res.inits:
            a, b = (
                g[(g["init"] == init) & (g["tuning"] == "default")],
                g[(g["init"] == init) & (g["tuning"] == TUNED)],
            )
            if a.empty and b.empty:
                continue

            def cell(x: pd.DataFrame) -> Cell:
                if x.empty:
                    return Cell(DASH, "muted")
                row = x.iloc[0]
                return Cell(fmt_auroc({"auroc": row["auroc"], "auroc_lo": row["lo"], "auroc_hi": row["hi"]}))

            head = [Cell(d), *([Cell(r)] if len(res.recipes) > 1 else []), Cell(m), Cell(init)]
            moved = f"{rank_d.get(init, DASH)} \u2192 {rank_t.get(init, DASH)}"
            body.append(
                head
                + [
                    cell(a),
                    cell(b),
                    _test_cell(res, d, r, init, m),
                    Cell(moved),
                    Cell(_chosen_text(res, d, r, init, m) or "not tuned", "muted"),
                ]
            )
    if not body:
        return None
    header = [
        "dataset",
        *(["recipe"] if len(res.recipes) > 1 else []),
        "adaptation",
        "init",
        "default recipe",
        "tuned recipe",
        "tuned - default (CI), p",
        "rank",
        "chosen on validation",
    ]
    return Table(
        "Does the ranking survive tuning? Mean AUROC at the default and at the tuned recipe",
        header,
        body,
        [
            "Tuned: the values with the highest validation mean AUROC (ties to 4 decimals: the point "
            "listed first), chosen on one seed and the validation split only; the final runs use them "
            "at every seed. The test is tuned against default for the same init on the same test "
            "patients and bootstrap resamples (pooled over the seeds where there are several; "
            "unadjusted p); 'detects': the difference it could detect with 80% power."
        ],
    )


def winner_lines(res: StudyResults) -> list[tuple[str, str]]:
    """(style, sentence) per group: the winner at the default and at the tuned recipe, and, where it
    changes, the new winner's paired test (against the reference) that supports it or not."""
    out = []
    for d, r, m, g in _groups(res):
        default, tuned = _ranked(g, {"tuning": "default"}), _ranked(g, {"tuning": TUNED})
        if default.empty or tuned.empty:
            continue
        a, b = default.iloc[0]["init"], tuned.iloc[0]["init"]
        where = f"{d}" + (f" ({r})" if len(res.recipes) > 1 else "") + f", {m}"
        if a == b:
            out.append(("", f"{where}: {a} wins at the default and at the tuned recipe."))
            continue
        test = _winner_test(res, tuned)
        sig = _winner_significant(res, tuned)
        out.append(
            (
                "sigworse" if sig else "muted",
                f"{where}: the winner changes from {a} (default recipe) to {b} (tuned)"
                + (f"; {test}" if test else "")
                + ("" if sig else " - not significant: the ranking is not shown to move"),
            )
        )
    return out


def _log_axis(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return bool(v.size) and bool((v > 0).all()) and v.max() / v.min() >= 10


def tuning_figure(res: StudyResults) -> bytes | None:
    """Validation mean AUROC over the search space: one row of panels per dataset and method, one
    panel per searched key (the best trial of each value at the first rung), one line per init, the
    chosen value circled."""
    t = res.tuning
    if t is None or t.empty:
        return None
    meta = {"dataset", "recipe", "init", "adaptation", "rung", "epochs", "order", "val_mean_auroc", "chosen"}
    keys = [c for c in t.columns if c not in meta]
    groups = list(t.groupby(["dataset", "adaptation"], sort=False))
    if not keys or not groups:
        return None
    fig = _figure(3.0 * len(keys), 2.6 * len(groups) + 0.3)
    axes = fig.subplots(len(groups), len(keys), squeeze=False)
    for row, ((d, m), g) in enumerate(groups):
        first = g[g["rung"] == g["rung"].min()]
        for col, key in enumerate(keys):
            ax = axes[row][col]
            for init in [i for i in res.inits if i in set(first["init"])]:
                gi = first[(first["init"] == init) & first[key].notna()]
                prof = gi.groupby(key)["val_mean_auroc"].max().sort_index()
                if prof.empty:
                    continue
                x = prof.index.to_numpy()
                numeric = np.issubdtype(np.asarray(x).dtype, np.number)
                xs = x.astype(float) if numeric else np.arange(len(x))
                ax.plot(
                    xs,
                    prof.to_numpy(dtype=float),
                    marker="o",
                    ms=3.5,
                    lw=1.3,
                    color=colour(res, init),
                    label=init,
                )
                pick = g[(g["init"] == init) & g["chosen"].astype(bool)]
                if len(pick) and pick.iloc[0][key] in set(x):
                    pos = list(x).index(pick.iloc[0][key])
                    ax.scatter(
                        [xs[pos]], [prof.iloc[pos]], s=80, facecolors="none", edgecolors=colour(res, init)
                    )
                if numeric and _log_axis(xs):
                    ax.set_xscale("log")
                ax.set_xticks(xs, [_value(v) for v in x])
                ax.minorticks_off()
            ax.set_xlabel(_KEY_WORDS.get(key, key), fontsize=8)
            ax.set_title(f"{d}, {m}", fontsize=8.5)
            ax.tick_params(labelsize=7)
            ax.grid(color="#dddddd", lw=0.6)
            if col == 0:
                ax.set_ylabel("validation mean AUROC", fontsize=8)
        axes[row][0].legend(fontsize=7, frameon=False)
    return _png(fig)


def tuning_section(
    res: StudyResults,
    html_parts: list[str],
    md_parts: list[str],
    toc: list[tuple[str, str, int]],
    fig: Callable,
) -> None:
    """Append the section (nothing without tuned results)."""
    table = tuning_table(res)
    png = tuning_figure(res)
    if table is None and png is None:
        return
    toc.append(("tuning", "Does the ranking survive tuning?", 1))
    html_parts.append('<h2 id="tuning">Does the ranking survive tuning?</h2>')
    md_parts.append("## Does the ranking survive tuning?\n")
    lines = winner_lines(res)
    if lines:
        html_parts.append(
            "<ul>" + "".join(f'<li class="{H.esc(s)}">{H.esc(t)}</li>' for s, t in lines) + "</ul>"
        )
        md_parts.append("".join(f"- {t}\n" for _, t in lines) + "\n")
    html_parts.append(H.table_html(table))
    md_parts.append(M.table_md(table, bold_best=False))
    cost = _cost_line(res)
    if cost:
        html_parts.append(f'<p class="note">{H.esc(cost)}</p>')
        md_parts.append(f"*{cost}*\n")
    png, path = fig("tuning.png", png)
    cap = (
        "Validation mean AUROC over the search space per init: for each searched value the best trial "
        "with it (first rung; the other keys at their best), the chosen value circled."
    )
    html_parts.append(H.figure_html(png, cap, "tuning"))
    md_parts.append(M.figure_md(path, cap))


def _cost_line(res: StudyResults) -> str:
    t = res.tuned
    if t is None or t.empty or "trial_epochs" not in t.columns:
        return ""
    epochs = pd.to_numeric(t["trial_epochs"], errors="coerce")
    n = pd.to_numeric(t["n_trials"], errors="coerce")
    strategies = ", ".join(sorted({str(s) for s in t["strategy"] if isinstance(s, str)}))
    return (
        f"Tuning: {int(n.sum())} trials over {len(t)} arm(s) ({strategies}), {int(epochs.sum())} "
        "trial-epochs on the validation split; the test split was read only by the final runs' evaluation."
    )
