"""The in-memory results of a study: what the report shows, independent of where it came from.

:class:`StudyResults` holds plain pandas frames and arrays (no file paths), so the report can be
rendered from a finished study (:func:`cxrbench.study.gather.gather_results`) or from synthetic
numbers in tests. Conventions: AUROC in [0, 1]; ``finding == "mean"`` is the macro mean over a
run's estimable findings; CIs are percentile bootstrap intervals at ``ci_level``;
``p_vs_reference`` is the paired test of "init differs from (or beats) the reference";
``p_adjusted`` is Benjamini-Hochberg adjusted (per-finding rows: over the findings of one dataset
and init pair; mean rows: over every dataset x init test of the main table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.report.protocol import Protocol
from cxrbench.stats.significance import benjamini_hochberg

MEAN = "mean"

# results.csv: the contract columns first, then the details.
RESULT_COLUMNS: tuple[str, ...] = (
    "dataset",
    "init",
    "finding",
    "auroc",
    "auroc_lo",
    "auroc_hi",
    "p_vs_reference",
    "p_adjusted",
    "recipe",
    "seed",
    "init_name",
    "auroc_std",
    "diff_vs_reference",
    "diff_lo",
    "diff_hi",
    "p_delong",
    "n",
    "n_positive",
    "sensitivity",
    "specificity",
    "accuracy",
    "f1",
    "threshold",
    "n_findings",
)
# Long table of results (one row per dataset x recipe x seed x init x finding).
TABLE_REQUIRED: tuple[str, ...] = (
    "dataset",
    "recipe",
    "seed",
    "init",
    "finding",
    "auroc",
    "auroc_lo",
    "auroc_hi",
)


@dataclass
class StudyResults:
    """Everything the report renders.

    Attributes:
        name, title, description: the study's name and headline.
        inits: init labels in display order; ``init_names``: label -> init string (e.g. dinov2-vitb14).
        reference: the reference init label (None: all pairs compared).
        datasets, recipes, seeds: display order of the matrix axes.
        table: long results, columns :data:`TABLE_REQUIRED` plus any of :data:`RESULT_COLUMNS`.
        pairs: all-pairs comparisons (``dataset, recipe, seed, init_a, init_b, finding, diff,
            diff_lo, diff_hi, p, p_adjusted``), empty with a reference.
        roc: ``(dataset, recipe, seed, init, finding) -> (fpr, tpr)`` arrays in [0, 1].
        curves: training curves, columns ``dataset, recipe, seed, init, epoch, val_mean_auroc,
            train_loss`` (one row per epoch).
        external: ``train_dataset, test_dataset, recipe, seed, init, n_findings, auroc, auroc_lo,
            auroc_hi`` (mean AUROC over the shared findings).
        summaries: ``dataset, split, images, patients`` per split.
        prevalence: ``dataset, split, finding, n, n_positive, prevalence``.
        provenance: versions, git commit, config hash, weight hashes, bootstrap settings...
        protocol: what was done, read back from the output files (the Methods text).
        missing: results that are not (yet) available (step ids or sentences).
        notes: remarks shown under the main table.
    """

    name: str
    inits: list[str]
    datasets: list[str]
    table: pd.DataFrame
    title: str | None = None
    description: str | None = None
    init_names: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    recipes: list[str] = field(default_factory=lambda: ["default"])
    seeds: list[int] = field(default_factory=lambda: [0])
    ci_level: float = 0.95
    alpha: float = 0.05
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    roc: dict[tuple, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    external: pd.DataFrame = field(default_factory=pd.DataFrame)
    summaries: pd.DataFrame = field(default_factory=pd.DataFrame)
    prevalence: pd.DataFrame = field(default_factory=pd.DataFrame)
    provenance: dict[str, Any] = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in TABLE_REQUIRED if c not in self.table.columns]
        if missing:
            raise ValueError(f"results table lacks columns {missing}")

    @property
    def display_title(self) -> str:
        return self.title or self.name

    def matrix_keys(self) -> list[tuple[str, int]]:
        """(recipe, seed) combinations present in the table, in display order."""
        have = set(zip(self.table["recipe"], self.table["seed"], strict=True))
        return [(r, s) for r in self.recipes for s in self.seeds if (r, s) in have]

    def findings_of(self, dataset: str) -> list[str]:
        """Findings of a dataset in table order (without the mean)."""
        t = self.table
        f = t.loc[(t["dataset"] == dataset) & (t["finding"] != MEAN), "finding"]
        return list(dict.fromkeys(f))

    def results_csv(self) -> pd.DataFrame:
        """The results.csv frame: one row per dataset x recipe x seed x init x finding, mean included."""
        t = self.table.copy()
        t["init_name"] = t["init"].map(lambda i: self.init_names.get(i, i))
        for c in RESULT_COLUMNS:
            if c not in t.columns:
                t[c] = np.nan
        order = {d: i for i, d in enumerate(self.datasets)}
        iorder = {d: i for i, d in enumerate(self.inits)}
        t["_d"] = t["dataset"].map(order)
        t["_i"] = t["init"].map(iorder)
        t["_f"] = (t["finding"] == MEAN).astype(int) * -1
        t = t.sort_values(["_d", "recipe", "seed", "_i", "_f"], kind="stable")
        extra = [c for c in t.columns if c not in RESULT_COLUMNS and not c.startswith("_")]
        return t[list(RESULT_COLUMNS) + extra].reset_index(drop=True)


def adjust_main_family(table: pd.DataFrame) -> pd.DataFrame:
    """BH over the mean rows of every dataset x init (per recipe and seed): the main table's family."""
    t = table.copy()
    if "p_vs_reference" not in t.columns:
        return t
    if "p_adjusted" not in t.columns:
        t["p_adjusted"] = np.nan
    for _, idx in t[t["finding"] == MEAN].groupby(["recipe", "seed"]).groups.items():
        p = t.loc[idx, "p_vs_reference"].to_numpy(dtype=np.float64)
        t.loc[idx, "p_adjusted"] = benjamini_hochberg(p)
    return t


def stars(p: float, alpha: float = 0.05) -> str:
    """Significance mark of an adjusted p-value: ``*`` < alpha, ``**`` < 0.01, ``***`` < 0.001."""
    if p is None or not np.isfinite(p):
        return ""
    if p < 0.001 and alpha >= 0.001:
        return "***"
    if p < 0.01 and alpha >= 0.01:
        return "**"
    return "*" if p < alpha else ""
