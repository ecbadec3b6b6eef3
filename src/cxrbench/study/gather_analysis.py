"""The "right for the right reasons" results of a study folder: subgroups, calibration, the
metadata-only shortcut baseline, operating points on external validation, saliency examples.

Read from the files the evaluation steps write beside ``metrics.json`` (``subgroups.json``,
``calibration.json``), the external steps' ``operating.json`` and the shortcut steps' folders;
the shortcut check (each image model against the baseline, a paired one-sided bootstrap) and the
saliency gallery (Grad-CAM of the best init's top true and false positives) are computed here.
Only the default condition (all labels, no noise) is shown; every seed's subgroup and calibration
numbers go to ``results.csv``, the report tables show the first seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_json_or_none
from cxrbench.common.layout import CALIBRATION_FILE, OPERATING_FILE, SUBGROUPS_FILE, predictions_path
from cxrbench.report.results import Analyses
from cxrbench.study.gather_localization import gather_localization
from cxrbench.study.steps import Plan


def _keyed(df: pd.DataFrame, keys: dict[str, Any]) -> pd.DataFrame:
    for k, v in reversed(list(keys.items())):
        df.insert(0, k, v)
    return df


def gather_analyses(plan: Plan, mean_auroc: pd.DataFrame | None = None, saliency: bool = True) -> Analyses:
    """Every analysis result of the study's default condition. ``mean_auroc`` (dataset, init, auroc
    of the first seed) picks the init whose examples the saliency gallery shows."""
    from cxrbench.evaluate.analysis import calibration_table, reliability_frame
    from cxrbench.report.subgroups import frames

    out = Analyses()
    cfg = plan.study.config
    ev = cfg.evaluation
    evals = [s for s in plan.of_kind("eval") if s.status == "done" and s.params.condition.is_default]
    parts: dict[str, list[pd.DataFrame]] = {k: [] for k in ("sub", "gaps", "under", "cal", "rel", "op")}
    first_seed = cfg.seeds[0]
    for s in evals:
        p = s.params
        keys = {"dataset": p.dataset, "recipe": p.recipe, "seed": p.seed, "init": p.label}
        sub = read_json_or_none(s.out / SUBGROUPS_FILE)
        if isinstance(sub, dict):
            table, gaps, under = frames(sub)
            parts["sub"].append(_keyed(table, keys))
            if p.seed == first_seed:
                parts["gaps"].append(_keyed(gaps, keys))
                parts["under"].append(_keyed(under, keys))
        cal = read_json_or_none(s.out / CALIBRATION_FILE)
        if isinstance(cal, dict):
            parts["cal"].append(_keyed(calibration_table(cal), keys))
            if p.seed == first_seed:
                parts["rel"].append(_keyed(reliability_frame(cal), keys))
    for s in plan.of_kind("external"):
        p = s.params
        done = s.status == "done" and p.condition.is_default
        doc = read_json_or_none(s.out / OPERATING_FILE) if done else None
        if isinstance(doc, dict) and p.seed == first_seed:
            parts["op"].append(_keyed(pd.DataFrame(doc.get("rows") or []),
                                      {"train_dataset": p.train_dataset, "test_dataset": p.test_dataset,
                                       "recipe": p.recipe, "init": p.label}))
    cat = {k: pd.concat(v, ignore_index=True) if v else pd.DataFrame() for k, v in parts.items()}
    out.subgroups, out.gaps, out.underdiagnosis = cat["sub"], cat["gaps"], cat["under"]
    out.calibration, out.reliability, out.operating = cat["cal"], cat["rel"], cat["op"]
    out.shortcut = _shortcut_checks(plan, [s for s in evals if s.params.seed == first_seed], ev)
    out.localization, out.localization_tests, notes = gather_localization(plan)
    out.notes += notes
    if saliency:
        firsts = [s for s in evals if s.params.seed == first_seed]
        out.examples = _galleries(plan, firsts, mean_auroc, out.notes)
    return out


def _shortcut_checks(plan: Plan, evals: list, ev: Any) -> pd.DataFrame:
    """Each image model (first seed) against its dataset's metadata-only shortcut, on the test split."""
    from cxrbench.evaluate.predictions import read_predictions
    from cxrbench.evaluate.shortcut import shortcut_check

    rows = []
    for step in plan.of_kind("shortcut"):
        if step.status != "done":
            continue
        p = step.params
        base = predictions_path(step.out, ev.split)
        if not base.is_file():
            continue
        shortcut = read_predictions(base)
        for s in evals:
            if s.params.dataset != p.dataset or s.params.recipe != p.recipe:
                continue
            model = read_predictions(predictions_path(Path(s.params.run), ev.split))
            try:
                check = shortcut_check(model, shortcut, name=s.params.label,
                                       n_resamples=max(1, ev.bootstrap), seed=ev.seed, cluster=ev.cluster,
                                       alpha=plan.study.config.comparisons.alpha, ci_level=ev.ci)
            except InputError:
                continue  # e.g. no shared finding: nothing to compare
            rows.append(_keyed(check, {"dataset": p.dataset, "recipe": p.recipe}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def _galleries(plan: Plan, evals: list, mean_auroc: pd.DataFrame | None, notes: list[str]) -> dict:
    """Per dataset: the top true and false positives of its best init, with Grad-CAM thumbnails."""
    from cxrbench.evaluate.examples import top_examples

    out: dict[str, pd.DataFrame] = {}
    for name in plan.study.config.datasets:
        mine = [s for s in evals if s.params.dataset == name]
        if not mine:
            continue
        best = mine[0]
        if mean_auroc is not None and len(mean_auroc):
            scores = mean_auroc[mean_auroc["dataset"] == name].set_index("init")["auroc"]
            best = max(mine, key=lambda s: float(scores.get(s.params.label, float("-inf"))))
        try:
            out[name] = top_examples(best.params.run, plan.study.config.evaluation.split, k=3, thumb_size=256)
            out[name].attrs["init"] = best.params.label
        except InputError as e:  # no grad-cam (the saliency extra), or the cache moved: say so
            notes.append(f"saliency gallery of {name} not made: {e.what}" + (f" ({e.fix})" if e.fix else ""))
            if "saliency" in (e.fix or "") or "grad-cam" in e.what:
                break
    return out
