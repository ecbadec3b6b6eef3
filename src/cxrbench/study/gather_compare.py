"""Comparison results of a study folder, keyed like the results table: the per-seed ``compare``
steps (``comparison.json``) and the seed-pooled ``pooled`` steps (``pooled.json``).

Rows are keyed by (dataset, recipe, seed, condition, init, finding); the condition is the tuple of
the run's axis values (:data:`cxrbench.study.axes.CONDITION_AXES`), so every condition of every
axis is handled the same way. Pooled rows carry ``seed = "pooled"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.axes import is_default
from cxrbench.common.errors import InputError
from cxrbench.common.layout import COMPARISON_JSON, POOLED_FILE
from cxrbench.common.validation import as_float
from cxrbench.study.axes import CONDITION_AXES
from cxrbench.study.steps import Plan

POOLED = "pooled"  # the seed value of rows pooled over seeds
CONDITION_COLUMNS = [a.column for a in CONDITION_AXES]
DIFF_COLUMNS = ("diff_vs_reference", "diff_lo", "diff_hi", "p_vs_reference", "p_adjusted", "p_delong",
                "min_detectable_diff")


def _detectable(r: dict[str, Any], ci_level: float) -> float:
    """The row's minimum detectable difference (80% power, 5% level); for comparison files written before
    it was stored, from the correlation that the stored CI of the difference implies."""
    from scipy.stats import norm

    from cxrbench.stats.power import implied_correlation, min_detectable_difference

    stored = as_float(r.get("min_detectable_diff"))
    if np.isfinite(stored) or "min_detectable_diff" in r or r.get("finding") == "mean":
        return stored
    a, b = as_float(r.get("auroc_a")), as_float(r.get("auroc_b"))
    lo, hi = as_float(r.get("diff_lo")), as_float(r.get("diff_hi"))
    npos, nneg = as_float(r.get("n_positive")), as_float(r.get("n_negative"))
    se = (hi - lo) / (2 * float(norm.ppf(0.5 + ci_level / 2)))
    corr = implied_correlation(se, a, b, npos, nneg)
    return min_detectable_difference(b, npos, nneg, corr) if np.isfinite(corr) else float("nan")


def _split_rows(plan: Plan, rows: list[dict], keys: dict[str, Any], pcol: str, acol: str,
                extra: dict[tuple, dict[str, float]], pair_rows: list[dict[str, Any]]) -> None:
    """Rows of one comparison file: versus the reference into ``extra``, other pairs into ``pair_rows``."""
    reference = plan.study.config.comparisons.reference
    cond = tuple(keys[c] for c in CONDITION_COLUMNS)
    ci_level = plan.study.config.evaluation.ci
    for r in rows:
        vals = {"diff_vs_reference": as_float(r.get("diff")), "diff_lo": as_float(r.get("diff_lo")),
                "diff_hi": as_float(r.get("diff_hi")), "p_vs_reference": as_float(r.get(pcol)),
                "p_adjusted": as_float(r.get(acol)), "p_delong": as_float(r.get("p_delong")),
                "min_detectable_diff": _detectable(r, ci_level)}
        if reference is not None and r.get("model_b") == reference:
            extra[(keys["dataset"], keys["recipe"], keys["seed"], cond, r["model_a"], r["finding"])] = vals
        else:
            pair_rows.append({**keys, "init_a": r["model_a"], "init_b": r["model_b"], "finding": r["finding"],
                              "diff": vals["diff_vs_reference"], "diff_lo": vals["diff_lo"],
                              "diff_hi": vals["diff_hi"], "p": vals["p_vs_reference"],
                              "p_adjusted": vals["p_adjusted"],
                              "min_detectable_diff": vals["min_detectable_diff"]})


def _attach(table: pd.DataFrame, extra: dict[tuple, dict[str, float]]) -> pd.DataFrame:
    t = table.copy()
    for col in DIFF_COLUMNS:
        t[col] = np.nan
    if len(t):
        for c in CONDITION_COLUMNS:
            if c not in t.columns:
                t[c] = next(a.default for a in CONDITION_AXES if a.column == c)
        conds = list(zip(*(t[c] for c in CONDITION_COLUMNS), strict=True))
        keys = list(zip(t["dataset"], t["recipe"], t["seed"], conds, t["init"], t["finding"], strict=True))
        for col in DIFF_COLUMNS:
            t[col] = [extra.get(k, {}).get(col, np.nan) for k in keys]
    return t


def _pcols(plan: Plan) -> tuple[str, str]:
    use_delong = plan.study.config.comparisons.method == "delong"
    return ("p_delong", "p_delong_adjusted") if use_delong else ("p_bootstrap", "p_adjusted")


def apply_comparisons(plan: Plan, table: pd.DataFrame, missing: list[str]) -> dict[str, pd.DataFrame]:
    """Add the per-seed differences and p-values versus the reference to ``table``; all-pairs rows
    go apart (``pairs``)."""
    pcol, acol = _pcols(plan)
    extra: dict[tuple, dict[str, float]] = {}
    pair_rows: list[dict[str, Any]] = []
    for step in plan.of_kind("compare"):
        if step.status != "done":
            missing.append(step.id)
            continue
        doc = _comparison(step.out / COMPARISON_JSON)
        p = step.params
        keys = {"dataset": p.dataset, "recipe": p.recipe, "seed": p.seed, **p.condition.as_dict}
        _split_rows(plan, doc.get("rows") or [], keys, pcol, acol, extra, pair_rows)
    return {"table": _attach(table, extra), "pairs": pd.DataFrame(pair_rows)}


def _comparison(path: Any) -> dict[str, Any]:
    """A comparison file's content (``rows``, pooled ``metrics``), or empty when it cannot be read."""
    from cxrbench.evaluate.compare import read_comparison

    try:
        return read_comparison(path)
    except InputError:
        return {}


def pooled_rows(plan: Plan, missing: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results rows pooled over seeds (``seed = "pooled"``: mean AUROC over seeds, two-level CI, seed
    SD, seed-ensemble AUROC, n_seeds) with their comparisons versus the reference, and all-pairs rows.
    The pooled tests are bootstrap tests (no DeLong for pooled seeds)."""
    rows: list[dict[str, Any]] = []
    extra: dict[tuple, dict[str, float]] = {}
    pair_rows: list[dict[str, Any]] = []
    for step in plan.of_kind("pooled"):
        if step.status != "done":
            missing.append(step.id)
            continue
        doc = _comparison(step.out / POOLED_FILE)
        p = step.params
        keys = {"dataset": p.dataset, "recipe": p.recipe, "seed": POOLED, **p.condition.as_dict}
        for m in doc.get("metrics") or []:
            rows.append({**keys, "init": m["arm"], "finding": m["finding"], "auroc": as_float(m.get("auroc")),
                         "auroc_lo": as_float(m.get("auroc_lo")), "auroc_hi": as_float(m.get("auroc_hi")),
                         "seed_sd": as_float(m.get("seed_sd")), "n_seeds": m.get("n_seeds"),
                         "ensemble_auroc": as_float(m.get("ensemble_auroc")),
                         "ensemble_lo": as_float(m.get("ensemble_lo")),
                         "ensemble_hi": as_float(m.get("ensemble_hi")),
                         "n": m.get("n"), "n_positive": m.get("n_positive")})
        _split_rows(plan, doc.get("rows") or [], keys, "p_bootstrap", "p_adjusted", extra, pair_rows)
    table = pd.DataFrame(rows)
    if len(table):
        table = _attach(table, extra)
    return table, pd.DataFrame(pair_rows)


def _tests_across(plan: Plan, groups: dict[tuple[str, str, str], dict[str, list[str]]], order: list[str],
                  ref_of: Any) -> list[dict[str, Any]]:
    """Paired tests between the arms of each group on the same test images, pooled over the seeds
    (two-level bootstrap when there are several). ``groups``: (dataset, recipe, init) -> arm value
    -> run folders (in seed order); ``order``: the arm values in config order; ``ref_of(arms)``: the
    reference arm of a group. Rows: ``dataset, recipe, init, arm_a, arm_b, finding, diff, ...``."""
    from cxrbench.common.layout import predictions_path
    from cxrbench.evaluate.pooled import compare_arms
    from cxrbench.evaluate.predictions import read_predictions

    ev = plan.study.config.evaluation
    rows: list[dict[str, Any]] = []
    for (name, recipe, label), runs in groups.items():
        arms = [a for a in order if a in runs]
        if len(arms) < 2 or len({len(v) for v in runs.values()}) != 1:
            continue
        ref = ref_of(arms)
        arms = [ref, *(a for a in arms if a != ref)]
        base = {"dataset": name, "recipe": recipe, "init": label}
        try:
            frames = {a: [read_predictions(predictions_path(run, ev.split)) for run in runs[a]] for a in arms}
            table = compare_arms(frames, ref, n_resamples=max(1, ev.bootstrap), seed=ev.seed,
                                 cluster=ev.cluster, alternative="two-sided", ci_level=ev.ci)
        except Exception as e:  # e.g. caches of other images: say so, never stop the report
            rows.append({**base, "arm_a": "", "arm_b": ref, "finding": "mean", "note": f"not compared: {e}"})
            continue
        for r in table.to_dict(orient="records"):
            rows.append({**base, "arm_a": r["model_a"], "arm_b": r["model_b"], "finding": r["finding"],
                         "diff": as_float(r.get("diff")), "diff_lo": as_float(r.get("diff_lo")),
                         "diff_hi": as_float(r.get("diff_hi")), "p": as_float(r.get("p_bootstrap")),
                         "p_adjusted": as_float(r.get("p_adjusted")), "n_seeds": r.get("n_seeds_a"),
                         "min_detectable_diff": as_float(r.get("min_detectable_diff"))})
    return rows


def recipe_tests(plan: Plan) -> pd.DataFrame:
    """With two or more preprocessing recipes: per dataset and init (default condition), every
    recipe against the first one on the same test images, pooled over the seeds: ``dataset, init,
    recipe_a, recipe_b, finding, diff, diff_lo, diff_hi, p, p_adjusted, n_seeds``."""
    cfg = plan.study.config
    groups: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for s in sorted(plan.of_kind("eval"), key=lambda s: s.params.seed):
        if s.status == "done" and s.params.condition.is_default:
            groups.setdefault((s.params.dataset, "", s.params.label), {}).setdefault(
                s.params.recipe, []).append(s.params.run)
    rows = _tests_across(plan, groups, list(cfg.preprocess), lambda arms: arms[0])
    out = pd.DataFrame(rows).rename(columns={"arm_a": "recipe_a", "arm_b": "recipe_b"})
    return out.drop(columns=["recipe"]) if "recipe" in out.columns else out


def tuning_tests(plan: Plan) -> pd.DataFrame:
    """With a ``tuning:`` block: per dataset, recipe, init and adaptation method (all labels, no noise),
    the tuned recipe against the default one on the same test images, pooled over the seeds:
    ``dataset, recipe, init, adaptation, tuning_a (tuned), tuning_b (default), finding, diff, ...``."""
    groups: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    methods: dict[tuple[str, str, str], str] = {}
    for s in sorted(plan.of_kind("eval"), key=lambda s: s.params.seed):
        values = s.params.condition.as_dict
        if s.status != "done" or any(not is_default(c, v) for c, v in values.items()
                                     if c not in ("adaptation", "tuning")):
            continue
        label = f"{s.params.label}\t{values['adaptation']}"  # one group per init and method
        groups.setdefault((s.params.dataset, s.params.recipe, label), {}).setdefault(
            values["tuning"], []).append(s.params.run)
        methods[(s.params.dataset, s.params.recipe, label)] = values["adaptation"]
    rows = _tests_across(plan, groups, ["default", "tuned"], lambda arms: "default")
    for r in rows:
        r["init"], r["adaptation"] = r["init"].split("\t")
    return pd.DataFrame(rows).rename(columns={"arm_a": "tuning_a", "arm_b": "tuning_b"})


def adaptation_tests(plan: Plan) -> pd.DataFrame:
    """With two or more adaptation methods: per dataset, recipe and init (all labels, no noise),
    every method against full fine-tuning (or the init's first method) on the same test images,
    pooled over the seeds: ``dataset, recipe, init, adaptation_a, adaptation_b, finding, diff, ...``."""
    cfg = plan.study.config
    groups: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for s in sorted(plan.of_kind("eval"), key=lambda s: s.params.seed):
        values = s.params.condition.as_dict
        if s.status != "done" or any(not is_default(c, v) for c, v in values.items() if c != "adaptation"):
            continue
        groups.setdefault((s.params.dataset, s.params.recipe, s.params.label), {}).setdefault(
            values["adaptation"], []).append(s.params.run)
    order = list(dict.fromkeys([*cfg.adaptations,
                                *(a for i in cfg.inits.values() for a in i.adaptations or ())]))
    rows = _tests_across(plan, groups, order, lambda arms: "full" if "full" in arms else arms[0])
    return pd.DataFrame(rows).rename(columns={"arm_a": "adaptation_a", "arm_b": "adaptation_b"})
