""""Does the winner hold?": the results across the study's conditions (label budget, label noise,
preprocessing recipe, adaptation, ...) and seeds.

* :func:`condition_table` -- one row per dataset x recipe x condition x init: the mean AUROC (pooled
  over the seeds when they were pooled, else the mean of the per-seed values) with its CI.
* :func:`axis_figure` -- AUROC against one axis (label fraction on a log scale, label noise), one
  line per init, CI bands: the label-efficiency and noise curves.
* :func:`ranking_table` -- per dataset and condition the ranking of the inits, whether it is the
  default condition's ranking, and the test that supports the winner (winner versus the reference).
* :func:`recipe_table` -- recipe against recipe on the same test images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.axes import BY_COLUMN, CONDITION_DEFAULTS, condition_name, is_default
from cxrbench.common.errors import InputError
from cxrbench.report.plots import _figure, _png, colour
from cxrbench.report.results import MEAN, POOLED, StudyResults, stars
from cxrbench.report.tables import DASH, NA, Cell, Table, fmt_auroc, fmt_diff, fmt_p

AXIS_LABELS = {c: a.label for c, a in BY_COLUMN.items()}
LINESTYLES = ("-", "--", ":", "-.")  # one per adaptation method on the curves


def condition_columns(res: StudyResults) -> list[str]:
    return [c for c in CONDITION_DEFAULTS if c in res.table.columns]


def condition_table(res: StudyResults) -> pd.DataFrame:
    """Mean-AUROC rows per dataset x recipe x condition x init (``source``: pooled or per-seed mean)."""
    t = res.table[res.table["finding"] == MEAN]
    if t.empty:
        return pd.DataFrame()
    cols = condition_columns(res)
    keys = ["dataset", "recipe", *cols, "init"]
    pooled = t[t["seed"].astype(str) == POOLED]
    seeds = t[t["seed"].astype(str) != POOLED]
    rows = []
    for key, g in seeds.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        match = pooled
        for k, v in row.items():
            match = match[match[k] == v]
        if len(match):
            r = match.iloc[0]
            row.update(auroc=r["auroc"], lo=r["auroc_lo"], hi=r["auroc_hi"], n_seeds=r.get("n_seeds"),
                       p=r.get("p_adjusted"), diff=r.get("diff_vs_reference"), diff_lo=r.get("diff_lo"),
                       diff_hi=r.get("diff_hi"), mdd=r.get("min_detectable_diff"), source="pooled")
        else:  # one seed (or not pooled): the mean of the seeds' values, CI of the first seed
            first = g.iloc[0]
            row.update(auroc=float(g["auroc"].mean()), lo=first["auroc_lo"], hi=first["auroc_hi"],
                       n_seeds=len(g), p=first.get("p_adjusted"), diff=first.get("diff_vs_reference"),
                       diff_lo=first.get("diff_lo"), diff_hi=first.get("diff_hi"),
                       mdd=first.get("min_detectable_diff"),
                       source="seed" if len(g) == 1 else "mean of seeds")
        rows.append(row)
    return pd.DataFrame(rows)


def _condition_name(row: dict[str, Any], cols: list[str], varying: Any = ()) -> str:
    return condition_name({c: row.get(c) for c in cols}, varying)


def _is_default(col: str, value: Any) -> bool:
    return is_default(col, value)


def axis_figure(res: StudyResults, column: str) -> bytes | None:
    """Mean AUROC against one numeric condition axis per dataset (one panel each), one line per init
    (and per adaptation method, by line style, when the study has several) with its CI band; the
    other axes at their defaults. Label fractions on a log scale."""
    ct = condition_table(res)
    axis = BY_COLUMN.get(column)
    if ct.empty or axis is None or not axis.numeric or column not in ct.columns or ct[column].nunique() < 2:
        return None
    lined = "adaptation" if "adaptation" in ct.columns and ct["adaptation"].nunique() > 1 else None
    others = [c for c in condition_columns(res) if c not in (column, lined)]
    for c in others:
        ct = ct[[_is_default(c, v) for v in ct[c]]]
    recipe = res.recipes[0]
    ct = ct[ct["recipe"] == recipe]
    datasets = [d for d in res.datasets if d in set(ct["dataset"])]
    if not datasets:
        return None
    methods = list(dict.fromkeys(ct[lined])) if lined else [None]
    free = [m for m in methods if m is not None and not _uses_labels(m)]  # zero-shot: no training label
    methods = [m for m in methods if m not in free]
    zero = ct[ct[lined].isin(free)] if free and column == "label_fraction" else ct.iloc[:0]
    ct = ct[~ct[lined].isin(free)] if free else ct
    fig = _figure(3.3 * len(datasets), 3.0)
    axes = np.atleast_1d(fig.subplots(1, len(datasets), squeeze=False)[0])
    for ax, d in zip(axes, datasets, strict=True):
        sd = ct[ct["dataset"] == d]
        x0 = _zero_label_points(ax, res, sd, zero[zero["dataset"] == d], column, lined, methods)
        for init in res.inits:
            for m, method in enumerate(methods):
                si = sd[sd["init"] == init]
                if method is not None:
                    si = si[si[lined] == method]
                si = si.assign(_x=si[column].astype(float)).sort_values("_x")
                if len(si) < 1:
                    continue
                x = si["_x"].to_numpy()
                c = colour(res, init)
                ax.plot(x, si["auroc"].astype(float), marker="o", ls=LINESTYLES[m % len(LINESTYLES)],
                        color=c, lw=1.4, ms=3.5, label=init + (f" ({method})" if lined else ""))
                lo, hi = si["lo"].astype(float).to_numpy(), si["hi"].astype(float).to_numpy()
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any() and m == 0:
                    ax.fill_between(x[ok], lo[ok], hi[ok], color=c, alpha=0.15, lw=0)
        if column == "label_fraction":
            ax.set_xscale("log")
        ticks = sorted(set(sd[column].astype(float)))
        ax.set_xticks(([x0] if x0 is not None else []) + ticks,
                      (["0"] if x0 is not None else []) + [f"{v:g}" for v in ticks])
        ax.minorticks_off()
        ax.set_title(d, fontsize=9)
        ax.set_xlabel(AXIS_LABELS.get(column, column), fontsize=8.5)
        ax.set_ylabel("mean AUROC", fontsize=8.5)
        ax.tick_params(labelsize=7.5)
        ax.grid(color="#dddddd", lw=0.6)
    axes[0].legend(fontsize=7.5, frameon=False)
    return _png(fig)


def _uses_labels(method: str) -> bool:
    """Whether an adaptation method learns from the training labels (the registry's word; unknown: yes)."""
    from cxrbench.train.methods import get_method

    try:
        return get_method(str(method)).uses_training_data
    except InputError:
        return True


def _zero_label_points(ax: Any, res: StudyResults, sd: pd.DataFrame, zero: pd.DataFrame, column: str,
                       lined: str | None, methods: list[Any]) -> float | None:
    """The methods that use no training label (zero-shot) as the 0-label point of the label-efficiency
    curves: a star per init at a position left of the smallest budget (tick "0"), joined to the first
    point of each of the init's curves. Returns that position (None when there is nothing to draw)."""
    if zero.empty or sd.empty:
        return None
    x0 = float(sd[column].astype(float).min()) / 3.0  # one log step left of the smallest budget
    for init in res.inits:
        zi = zero[zero["init"] == init]
        if zi.empty:
            continue
        z = zi.iloc[0]
        c = colour(res, init)
        y, lo, hi = (float(z[k]) for k in ("auroc", "lo", "hi"))
        err = [[y - lo], [hi - y]] if np.isfinite(lo) and np.isfinite(hi) else None
        ax.errorbar([x0], [y], yerr=err, marker="*", ms=8, color=c, lw=1.0, capsize=2,
                    label=f"{init} ({z[lined]}, 0 labels)")
        for m, method in enumerate(methods):
            si = sd[(sd["init"] == init) & (sd[lined] == method)] if lined else sd[sd["init"] == init]
            if len(si):
                first = si.assign(_x=si[column].astype(float)).sort_values("_x").iloc[0]
                ax.plot([x0, float(first["_x"])], [y, float(first["auroc"])], color=c, lw=0.9, alpha=0.6,
                        ls=LINESTYLES[m % len(LINESTYLES)])
    return x0


def _ranked(sd: pd.DataFrame, key: dict[str, Any]) -> pd.DataFrame:
    sel = sd
    for c, v in key.items():
        sel = sel[sel[c] == v]
    return sel[np.isfinite(sel["auroc"].astype(float))].sort_values("auroc", ascending=False)


def _winner_pick(res: StudyResults, order: pd.DataFrame) -> Any:
    """The row whose test versus the reference supports the winner (the runner-up's when the
    reference wins), or None."""
    if not res.reference or order.empty:
        return None
    pick = order.iloc[0] if order.iloc[0]["init"] != res.reference else (
        order.iloc[1] if len(order) > 1 else None)
    return pick if pick is not None and _finite(pick.get("diff")) else None


def _winner_test(res: StudyResults, order: pd.DataFrame) -> str:
    """The winner's test versus the reference (the runner-up's when the reference wins), with the
    difference the test set could detect beside a result that is not significant."""
    pick = _winner_pick(res, order)
    if pick is None:
        return ""
    mark = stars(pick["p"], res.alpha)
    mdd = pick.get("mdd")
    power = (f"; not significant, detects \u2265{float(mdd):.3f} at 80% power"
             if not mark and _finite(mdd) else "")
    return (f"{pick['init']} - {res.reference}: {fmt_diff(_diff(pick))}, p {fmt_p(pick['p']) or NA}"
            + (f" {mark}" if mark else "") + power)


def _winner_significant(res: StudyResults, order: pd.DataFrame) -> bool:
    pick = _winner_pick(res, order)
    return pick is not None and bool(stars(pick["p"], res.alpha))


def ranking_table(res: StudyResults) -> Table | None:
    """Per dataset and condition (recipe, label budget, noise, ...): the inits ranked by mean AUROC,
    whether the winner is the default condition's, and the winner's test versus the reference."""
    ct = condition_table(res)
    if ct.empty:
        return None
    cols = condition_columns(res)
    conds = [dict(zip(["recipe", *cols], k, strict=True))
             for k in ct[["recipe", *cols]].drop_duplicates().itertuples(index=False)]
    conds.sort(key=lambda key: _config_order(res, key))
    if len(conds) < 2:
        return None
    default = {"recipe": res.recipes[0], **{c: CONDITION_DEFAULTS[c] for c in cols}}
    body = []
    for d in res.datasets:
        sd = ct[ct["dataset"] == d]
        if sd.empty:
            continue
        base = _ranked(sd, default)
        base_winner = base.iloc[0]["init"] if len(base) else None
        for key in conds:
            order = _ranked(sd, key)
            if order.empty:
                continue
            is_default = key == default
            text = " > ".join(f"{r['init']} ({float(r['auroc']):.3f})"
                              for r in order.to_dict(orient="records"))
            winner = order.iloc[0]["init"]
            same = DASH if is_default or base_winner is None else (
                "same winner" if winner == base_winner else f"winner changes: {base_winner} -> {winner}")
            if len(order) < 2:  # one init ran in this condition: nothing is ranked
                text, same = text + " (the only init)", DASH
            name = ((key["recipe"] + ", " if len(res.recipes) > 1 else "")
                    + _condition_name(key, cols, res.axes))
            style = ""
            if same.startswith("winner changes"):  # alarm red only when a test backs the new winner
                style = "sigworse" if _winner_significant(res, order) else "muted"
                same += "" if style == "sigworse" else " (not significant)"
            body.append([Cell(d), Cell(name, "mean" if is_default else ""), Cell(text), Cell(same, style),
                         Cell(_winner_test(res, order))])
    notes = ["Ranking by mean AUROC (pooled over the seeds where they were pooled). The test is the "
             f"winner's paired test versus {res.reference} in that condition (BH-adjusted p), or the "
             "runner-up's when the reference wins: a changed winner without a significant test is not a "
             "changed answer." if res.reference else
             "Ranking by mean AUROC (pooled over the seeds where they were pooled)."]
    return Table("Does the winner hold? Ranking of the initializations per condition",
                 ["dataset", "condition", "ranking (mean AUROC)", "vs default condition", "winner's test"],
                 body, notes)


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _config_order(res: StudyResults, key: dict[str, Any]) -> tuple:
    """Sort key of a condition: recipe, then each axis value in config order (defaults first)."""
    out: list[Any] = [res.recipes.index(key["recipe"]) if key["recipe"] in res.recipes else 99]
    for c, v in key.items():
        if c == "recipe":
            continue
        values = res.axes.get(c, [])
        pos = next((i for i, x in enumerate(values) if BY_COLUMN[c].same(x, v)), len(values))
        out.append((not _is_default(c, v), pos))
    return tuple(out)


def _diff(row: Any) -> dict[str, Any]:
    return {"diff_vs_reference": row.get("diff"), "diff_lo": row.get("diff_lo"),
            "diff_hi": row.get("diff_hi")}


def recipe_table(res: StudyResults) -> Table | None:
    """Recipe versus the first recipe per dataset and init (mean AUROC), on the same test images."""
    rt = res.recipe_tests
    if rt is None or rt.empty:
        return None
    rt = rt[rt["finding"] == MEAN]
    rows = []
    for r in rt.to_dict(orient="records"):
        if r.get("note") and not isinstance(r.get("diff"), float):
            rows.append([Cell(r["dataset"]), Cell(r["init"]), Cell(str(r.get("note")), "muted"), Cell(""),
                         Cell("")])
            continue
        d = {"diff_vs_reference": r.get("diff"), "diff_lo": r.get("diff_lo"), "diff_hi": r.get("diff_hi")}
        p = r.get("p")
        sig = "sig" if p is not None and math.isfinite(float(p)) and float(p) < res.alpha else ""
        rows.append([Cell(r["dataset"]), Cell(r["init"]), Cell(f"{r['recipe_a']} - {r['recipe_b']}"),
                     Cell(fmt_diff(d), sig), Cell(fmt_p(p))])
    return Table("Preprocessing recipes compared on the same test images (mean AUROC)",
                 ["dataset", "init", "recipes", "difference (CI)", "p"], rows,
                 ["Paired test on the same test patients and resamples (pooled over the seeds when there "
                  "are several); a difference above 0 favours the first recipe."])


def adaptation_table(res: StudyResults) -> Table | None:
    """Init x adaptation method per dataset (and recipe): the mean AUROC (pooled over the seeds,
    all labels, no noise) with its CI, each method's paired test versus full fine-tuning of the
    same init, and the init's best method."""
    methods = res.axes.get("adaptation")
    ct = condition_table(res)
    if not methods or ct.empty or "adaptation" not in ct.columns:
        return None
    for c in condition_columns(res):
        if c != "adaptation":
            ct = ct[[_is_default(c, v) for v in ct[c]]]
    tests = res.adaptation_tests
    if tests is not None and len(tests):
        tests = tests[tests["finding"] == MEAN]
    body = []
    for d in res.datasets:
        for recipe in res.recipes:
            sd = ct[(ct["dataset"] == d) & (ct["recipe"] == recipe)]
            for init in res.inits:
                si = sd[sd["init"] == init]
                if si.empty:
                    continue
                cells, best = [], None
                for m in methods:
                    row = si[si["adaptation"] == m]
                    if row.empty:
                        cells.append(Cell(DASH, "muted"))
                        continue
                    r = row.iloc[0]
                    text = fmt_auroc({"auroc": r["auroc"], "auroc_lo": r["lo"], "auroc_hi": r["hi"]})
                    if best is None or float(r["auroc"]) > best[1]:
                        best = (m, float(r["auroc"]))
                    style = ""
                    t = (tests[(tests["dataset"] == d) & (tests["recipe"] == recipe) & (tests["init"] == init)
                               & (tests["adaptation_a"] == m)] if tests is not None and len(tests) else None)
                    if t is not None and len(t) and isinstance(t.iloc[0].get("diff"), float):
                        tr = t.iloc[0]
                        p = tr.get("p")
                        diff = fmt_diff({"diff_vs_reference": tr["diff"], "diff_lo": tr["diff_lo"],
                                         "diff_hi": tr["diff_hi"]})
                        text += f"; vs {tr['adaptation_b']} {diff}, p {fmt_p(p) or NA}"
                        if p is not None and math.isfinite(float(p)) and float(p) < res.alpha:
                            style = "sig" if float(tr["diff"]) > 0 else "sigworse"
                    cells.append(Cell(text, style))
                head = [Cell(d)] + ([Cell(recipe)] if len(res.recipes) > 1 else []) + [Cell(init)]
                body.append(head + cells + [Cell(best[0] if best else DASH, "mean")])
    if not body:
        return None
    header = ["dataset", *(["recipe"] if len(res.recipes) > 1 else []), "init",
              *(BY_COLUMN["adaptation"].text(m).replace("adaptation ", "") for m in methods), "best method"]
    return Table("Adaptation methods: mean AUROC per initialization and method", header, body,
                 ["Mean AUROC with its CI (pooled over the seeds where there are several; all labels, no "
                  "label noise). Each method's paired test is against full fine-tuning of the same init "
                  "(or its first method) on the same test patients and bootstrap resamples (two-level over "
                  "seeds when pooled; unadjusted p). full: every weight fine-tuned; lora: low-rank adapters "
                  "and head; linear: a head on the cached frozen embeddings; knn: cosine kNN on them (no "
                  "training); zeroshot: text prompts in a vision-language init's joint space (no training "
                  "label: the first rung of the ladder zero-shot, probe, fine-tuning). A dash: the init was "
                  "not run with that method."])
