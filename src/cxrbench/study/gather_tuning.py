"""The tuning results of a study folder: every trial (``trial.json``) and every arm's choice
(``tuning.json``), as plain frames for the report's "Does the ranking survive tuning?" section and the
``tuned_<key>`` columns of results.csv."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cxrbench.common.fileio import read_json_or_none
from cxrbench.study.steps import Plan
from cxrbench.train.tune import METRIC, TUNING_FILE

TUNED_PREFIX = "tuned_"  # results.csv: tuned_lr, tuned_weight_decay, ... on the tuned condition's rows


def tuning_frames(plan: Plan, missing: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(trials, chosen)``. ``trials``: one row per trial of every finished choice (dataset, recipe,
    init, adaptation, rung, epochs, order, the point's keys, ``val_mean_auroc``, ``chosen``);
    ``chosen``: one row per arm (dataset, recipe, init, adaptation, ``tuned_<key>`` values, ``value``,
    strategy, budget, trial_epochs, ``default_<key>`` values)."""
    trials: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for s in plan.of_kind("tuned"):
        p = s.params
        doc = read_json_or_none(s.out / TUNING_FILE) if s.status == "done" else None
        if not isinstance(doc, dict):
            if missing is not None:
                missing.append(s.id)
            continue
        keys = {
            "dataset": p.dataset,
            "recipe": p.recipe,
            "init": p.label,
            "adaptation": p.condition.as_dict.get("adaptation", "full"),
        }
        for t in doc.get("trials") or []:
            trials.append(
                {
                    **keys,
                    "rung": t.get("rung"),
                    "epochs": t.get("epochs"),
                    "order": t.get("order"),
                    **(t.get("point") or {}),
                    METRIC: t.get(METRIC),
                    "chosen": bool(t.get("chosen")),
                }
            )
        settings = doc.get("settings") or {}
        chosen.append(
            {
                **keys,
                **{TUNED_PREFIX + k: v for k, v in (doc.get("chosen") or {}).items()},
                "value": doc.get("value"),
                "strategy": settings.get("strategy"),
                "budget": settings.get("budget"),
                "trial_epochs": doc.get("trial_epochs"),
                "n_trials": len(doc.get("trials") or []),
                "seed": settings.get("seed"),
                "tuning_epochs": settings.get("epochs"),
                **{"default_" + k: v for k, v in (doc.get("default") or {}).items()},
            }
        )
    return pd.DataFrame(trials), pd.DataFrame(chosen)


def with_tuned_values(table: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the ``tuned_<key>`` columns filled on the rows of the tuned condition."""
    if table.empty or chosen.empty or "tuning" not in table.columns:
        return table
    cols = [c for c in chosen.columns if c.startswith(TUNED_PREFIX)]
    keys = ["dataset", "recipe", "init", "adaptation"]
    look = {tuple(r[k] for k in keys): r for r in chosen.to_dict(orient="records")}
    t = table.copy()
    adaptation = (
        t["adaptation"].fillna("full") if "adaptation" in t.columns else pd.Series("full", index=t.index)
    )
    rows = zip(t["dataset"], t["recipe"], t["init"], adaptation, t["tuning"], strict=True)
    found = [look.get((d, r, i, a)) if tuning == "tuned" else None for d, r, i, a, tuning in rows]
    for c in cols:
        t[c] = [f.get(c) if f is not None else None for f in found]
    return t
