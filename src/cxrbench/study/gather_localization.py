"""The localization results of a study folder: every localization step's summary (saliency scored
against the regions, per finding and metric, against chance) and the paired tests between the inits
scored on the same images (per dataset, recipe, adaptation method and seed), as the report shows them."""

from __future__ import annotations

import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.study.steps import Plan

KEYS: tuple[str, ...] = ("dataset", "recipe", "adaptation", "seed", "init")


def gather_localization(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(summary rows keyed by :data:`KEYS`, paired tests between inits, notes)."""
    from cxrbench.evaluate.localization import localization_table, read_localization
    from cxrbench.evaluate.localization_stats import compare_localization

    cfg = plan.study.config
    tables, notes = [], []
    rows: dict[tuple, dict[str, pd.DataFrame]] = {}
    for s in plan.of_kind("localization"):
        if s.status != "done":
            continue
        p = s.params
        adaptation = str(p.condition.as_dict.get("adaptation") or "full")
        try:
            doc, scored = read_localization(s.out)
        except InputError as e:
            notes.append(f"localization of {p.label} on {p.dataset} not read: {e.what}")
            continue
        if not doc.get("scored", True):
            note = f"localization on {p.dataset}: nothing scored ({doc.get('reason')})"
            if note not in notes:
                notes.append(note)
            continue
        keys = {"dataset": p.dataset, "recipe": p.recipe, "adaptation": adaptation, "seed": p.seed,
                "init": p.label}
        table = localization_table(doc)
        for k, v in reversed(keys.items()):
            table.insert(0, k, v)
        table["method"], table["hit_iou"] = doc.get("method"), doc.get("hit_iou")
        table.attrs = {}
        tables.append(table)
        rows.setdefault((p.dataset, p.recipe, adaptation, p.seed), {})[p.label] = scored
    summary = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    ev, comp = cfg.evaluation, cfg.comparisons
    tests = []
    for (dataset, recipe, adaptation, seed), by_init in rows.items():
        if len(by_init) < 2:
            continue
        reference = comp.reference if not comp.all_pairs and comp.reference in by_init else None
        try:
            t = compare_localization(by_init, reference, n_resamples=max(1, ev.bootstrap), seed=ev.seed,
                                     cluster=ev.cluster, ci_level=ev.ci, alternative=comp.alternative,
                                     fdr=comp.fdr)
        except InputError as e:
            notes.append(f"localization tests on {dataset} ({recipe}, seed {seed}) not made: {e.what}")
            continue
        for k, v in reversed({"dataset": dataset, "recipe": recipe, "adaptation": adaptation,
                              "seed": seed}.items()):
            t.insert(0, k, v)
        t.attrs = {}
        tests.append(t)
    return summary, pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(), notes
