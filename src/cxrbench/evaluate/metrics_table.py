"""The metrics of one evaluation as a tidy table, beside the nested dict ``metrics.json`` holds.

:class:`Metrics` is the dict :func:`~cxrbench.evaluate.scoring.evaluate_predictions` and
:func:`~cxrbench.evaluate.run_eval.evaluate_run` return (``metrics.json``'s content, unchanged) with
one addition, :meth:`Metrics.table`; :func:`metrics_table` does the same for a dict read back
from a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

MACRO = "mean"  # the finding name of the macro average's rows (as in results.csv)

TABLE_COLUMNS: tuple[str, ...] = (
    "finding", "metric", "value", "ci_low", "ci_high", "mean", "std", "n_resamples_used",
    "n_resamples_excluded", "n", "n_positive", "n_negative", "prevalence", "threshold", "estimable",
)
"""Columns of :func:`metrics_table`: one row per finding (and ``mean``, the macro average over the
estimable findings) and metric; ``value`` is the point estimate on the whole split, ``ci_low`` /
``ci_high`` the bootstrap percentile interval at the file's CI level, ``mean`` / ``std`` over the
usable resamples; ``n*``, ``prevalence``, ``threshold`` (the operating point of the threshold
metrics) and ``estimable`` describe the finding (empty on the ``mean`` rows)."""


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """A metrics dict (``metrics.json``'s content) as a long, tidy DataFrame (:data:`TABLE_COLUMNS`).

    Example::

        m = cxrbench.evaluate_run("runs/nih", "test")
        m.table().pivot(index="finding", columns="metric", values="value")
    """
    rows: list[dict[str, Any]] = []
    for finding, entry in (metrics.get("per_finding") or {}).items():
        facts = {k: entry.get(k) for k in ("n", "n_positive", "n_negative", "prevalence", "threshold",
                                           "estimable")}
        for name, summary in (entry.get("metrics") or {}).items():
            rows.append({"finding": finding, "metric": name, **_summary(summary), **facts})
    for name, summary in ((metrics.get("macro") or {}).get("metrics") or {}).items():
        rows.append({"finding": MACRO, "metric": name, **_summary(summary)})
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in ("value", "ci_low", "ci_high", "mean", "std", "prevalence", "threshold"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("float64")
    for col in ("n_resamples_used", "n_resamples_excluded", "n", "n_positive", "n_negative"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    table["estimable"] = table["estimable"].astype("boolean")
    table["finding"] = table["finding"].astype("string")
    table["metric"] = table["metric"].astype("string")
    table.attrs["ci_level"] = (metrics.get("ci") or {}).get("level")
    table.attrs["threshold_source"] = (metrics.get("threshold_policy") or {}).get("source")
    return table


def _summary(summary: Any) -> dict[str, Any]:
    keys = ("value", "ci_low", "ci_high", "mean", "std", "n_resamples_used", "n_resamples_excluded")
    return {k: summary.get(k) for k in keys} if isinstance(summary, Mapping) else {"value": summary}


class Metrics(dict):
    """The metrics dict (``metrics.json``'s content: ``per_finding``, ``macro``, ``bootstrap``, ``ci``,
    ``threshold_policy``, ...) with :meth:`table`, the same numbers as a tidy DataFrame."""

    def table(self) -> pd.DataFrame:
        """One row per finding (and ``mean``) and metric: :func:`metrics_table`."""
        return metrics_table(self)
