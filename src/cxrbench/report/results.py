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

from cxrbench.common.axes import CONDITION_DEFAULTS, is_default
from cxrbench.report.protocol import Protocol
from cxrbench.stats.significance import benjamini_hochberg

MEAN = "mean"
SHORTCUT = "shortcut"  # the init label of the metadata-only baseline's rows in results.csv
SHORTCUT_NAME = "metadata-only logistic regression (view, sex, age, site; no pixel)"

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
    "adaptation",
    "label_fraction",
    "label_noise",
    "tuning",
    "init_name",
    "auroc_std",
    "diff_vs_reference",
    "diff_lo",
    "diff_hi",
    "p_delong",
    "min_detectable_diff",
    "n",
    "n_positive",
    "sensitivity",
    "specificity",
    "accuracy",
    "f1",
    "threshold",
    "n_findings",
    "n_seeds",
    "seed_sd",
    "seed_sd_covers",
    "deterministic",
    "ensemble_auroc",
    "ensemble_lo",
    "ensemble_hi",
    "subgroup",
    "ece",
    "ece_lo",
    "ece_hi",
    "brier",
    "calibration_slope",
    "calibration_intercept",
)
POOLED = "pooled"  # the seed value of rows pooled over seeds
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
class Analyses:
    """"Right for the right reasons" results, keyed by ``dataset, recipe, seed, init``:

    ``subgroups`` (rows of subgroups.json ``table``: variable, subgroup, finding, n, n_positive,
    prevalence, auroc/average_precision/sensitivity/specificity with CIs, too_few, note),
    ``gaps`` and ``underdiagnosis`` (first seed), ``calibration`` (finding, stage, ece, ece_lo,
    ece_hi, brier, slope, intercept), ``reliability`` (first seed), ``shortcut`` (each image model
    against the metadata-only baseline: compare rows + beats_shortcut, warning), ``operating``
    (external validation: source threshold vs the target's optimum), ``examples`` (dataset -> top
    true/false positives with Grad-CAM PNG bytes; ``.attrs["init"]`` names the init),
    ``localization`` (saliency scored against the regions: dataset, recipe, adaptation, seed, init and
    the summary columns of :mod:`cxrbench.evaluate.localization_stats`), ``localization_tests`` (paired
    tests between inits on the same images), ``notes``,
    ``baseline`` (the metadata-only shortcut's own results rows, ``init = "shortcut"``: results.csv only).
    """

    subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)
    underdiagnosis: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    shortcut: pd.DataFrame = field(default_factory=pd.DataFrame)
    operating: pd.DataFrame = field(default_factory=pd.DataFrame)
    examples: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    localization: pd.DataFrame = field(default_factory=pd.DataFrame)
    localization_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    baseline: pd.DataFrame = field(default_factory=pd.DataFrame)  # the shortcut's own results rows


@dataclass
class StudyResults:
    """Everything the report renders.

    Attributes:
        name, title, description: the study's name and headline.
        inits: init labels in display order; ``init_names``: label -> init string (e.g. dinov2-vitb14).
        reference: the reference init label (None: all pairs compared).
        datasets, recipes, seeds: display order of the matrix axes.
        axes: the values of every condition axis with more than one (``{"label_fraction": [0.25,
            1.0]}``), in config order; the default condition is :data:`CONDITION_DEFAULTS`.
        table: long results, columns :data:`TABLE_REQUIRED` plus any of :data:`RESULT_COLUMNS`;
            rows with ``seed == "pooled"`` are pooled over the seeds (mean, two-level bootstrap CI,
            ``seed_sd``, ``n_seeds``, the seed-ensemble's AUROC).
        pairs: all-pairs comparisons (``dataset, recipe, seed, init_a, init_b, finding, diff,
            diff_lo, diff_hi, p, p_adjusted``), empty with a reference.
        analyses: subgroups, calibration, shortcut baseline, operating points, saliency examples.
        tuning, tuned, tuning_tests: with a ``tuning:`` block, every trial (dataset, recipe, init,
            adaptation, rung, epochs, order, the point's keys, val_mean_auroc, chosen), each arm's choice
            (``tuned_<key>``, value, strategy, budget, trial_epochs, ``default_<key>``), and the tuned
            recipe against the default one per init on the same test images (``tuning_a``, ``tuning_b``,
            finding, diff, diff_lo, diff_hi, p, ...). The tuned runs are the ``tuning == "tuned"`` rows.
        recipe_tests: recipe versus the first recipe per dataset and init on the same test images
            (``dataset, init, recipe_a, recipe_b, finding, diff, diff_lo, diff_hi, p, p_adjusted,
            n_seeds``), with two or more recipes.
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
    axes: dict[str, list[Any]] = field(default_factory=dict)
    ci_level: float = 0.95
    alpha: float = 0.05
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    recipe_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    adaptation_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuned: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning_tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    analyses: Analyses = field(default_factory=Analyses)
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

    def default_condition(self) -> pd.DataFrame:
        """The table's rows of the default condition (all labels, no noise): the main results."""
        t = self.table
        mask = np.ones(len(t), dtype=bool)
        for col in CONDITION_DEFAULTS:
            if col in t.columns:
                mask &= default_mask(t[col], col)
        return t[mask]

    def matrix_keys(self) -> list[tuple[str, int | str]]:
        """(recipe, seed) sections of the main results, in display order: ``(recipe, "pooled")``
        when the seeds were pooled for that recipe, else one per seed."""
        t = self.default_condition()
        have = set(zip(t["recipe"], t["seed"], strict=True))
        out: list[tuple[str, int | str]] = []
        for r in self.recipes:
            if (r, POOLED) in have:
                out.append((r, POOLED))
            else:
                out += [(r, s) for s in self.seeds if (r, s) in have]
        return out

    def default_external(self) -> pd.DataFrame:
        """External-validation rows of the default condition."""
        e = self.external
        if e.empty:
            return e
        mask = np.ones(len(e), dtype=bool)
        for col in CONDITION_DEFAULTS:
            if col in e.columns:
                mask &= default_mask(e[col], col)
        return e[mask]

    @property
    def pooled(self) -> bool:
        """Whether any result is pooled over several seeds."""
        return bool((self.table["seed"].astype(str) == POOLED).any()) if len(self.table) else False

    def findings_of(self, dataset: str) -> list[str]:
        """Findings of a dataset in table order (without the mean)."""
        t = self.table
        f = t.loc[(t["dataset"] == dataset) & (t["finding"] != MEAN), "finding"]
        return list(dict.fromkeys(f))

    def _with_analyses(self) -> pd.DataFrame:
        """The table plus calibration columns on the finding rows and one row per subgroup
        (``subgroup = "sex=F"``, the default condition, every seed)."""
        t = self.table.copy()
        keys = ["dataset", "recipe", "seed", "init", "finding"]
        cal = self.analyses.calibration
        if len(cal) and len(t):
            c = cal[cal["stage"] == "before"].rename(columns={"slope": "calibration_slope",
                                                             "intercept": "calibration_intercept"})
            c = c[keys + ["ece", "ece_lo", "ece_hi", "brier", "calibration_slope", "calibration_intercept"]]
            default = np.ones(len(t), dtype=bool)
            for col in CONDITION_DEFAULTS:
                if col in t.columns:
                    default &= default_mask(t[col], col)
            merged = t[default].merge(c, on=keys, how="left")
            t = pd.concat([merged, t[~default]], ignore_index=True)
        sg = self.analyses.subgroups
        if len(sg):
            rows = sg.copy()
            rows["subgroup"] = rows["variable"].astype(str) + "=" + rows["subgroup"].astype(str)
            keep = [c for c in (*keys, "subgroup", "auroc", "auroc_lo", "auroc_hi", "n", "n_positive",
                                "sensitivity", "specificity", "threshold") if c in rows.columns]
            rows = rows[keep]
            for col, value in CONDITION_DEFAULTS.items():
                if col in t.columns:
                    rows[col] = value
            t = pd.concat([t, rows], ignore_index=True)
        return t

    def results_csv(self) -> pd.DataFrame:
        """The results.csv frame: one row per dataset x recipe x condition x seed x init x finding
        (mean included; ``seed == "pooled"`` rows pooled over the seeds), the metadata-only shortcut's
        rows (``init = "shortcut"``, no seed: it does not depend on one) beside them, then per subgroup."""
        t = self._with_analyses()
        base = self.analyses.baseline
        if len(base):
            t = pd.concat([t, base.assign(init=SHORTCUT)], ignore_index=True)
        names = {**self.init_names, SHORTCUT: SHORTCUT_NAME}
        t["init_name"] = t["init"].map(lambda i: names.get(i, i))
        for c in RESULT_COLUMNS:
            if c not in t.columns:
                t[c] = np.nan
        order = {d: i for i, d in enumerate(self.datasets)}
        iorder = {d: i for i, d in enumerate([*self.inits, SHORTCUT])}
        t["_d"] = t["dataset"].map(order)
        t["_i"] = t["init"].map(iorder)
        t["_f"] = (t["finding"] == MEAN).astype(int) * -1
        sorder = {s: i for i, s in enumerate(self.seeds)}
        t["_s"] = t["seed"].map(lambda s: sorder.get(s, len(sorder)))  # per seed, then pooled
        t["_g"] = t["subgroup"].notna() if "subgroup" in t.columns else False  # subgroup rows last
        t = t.sort_values(["_g", "_d", "recipe", *[c for c in CONDITION_DEFAULTS if c in t.columns], "_s",
                           "_i", "_f"], kind="stable")
        extra = [c for c in t.columns if c not in RESULT_COLUMNS and not c.startswith("_")]
        return t[list(RESULT_COLUMNS) + extra].reset_index(drop=True)


def default_mask(values: pd.Series, column: str) -> np.ndarray:
    """Rows whose value of the condition axis ``column`` is its default (missing counts as default:
    tables gathered before the axis existed)."""
    return np.array([is_default(column, v) for v in values], dtype=bool)


def adjust_main_family(table: pd.DataFrame) -> pd.DataFrame:
    """BH over the mean rows of every dataset x init (per recipe and seed): the main table's family."""
    t = table.copy()
    if "p_vs_reference" not in t.columns:
        return t
    if "p_adjusted" not in t.columns:
        t["p_adjusted"] = np.nan
    by = ["recipe", "seed", *[c for c in CONDITION_DEFAULTS if c in t.columns]]
    mean = t[t["finding"] == MEAN].copy()
    mean["seed"] = mean["seed"].astype(str)  # int seeds and "pooled" group apart
    for _, idx in mean.groupby(by, dropna=False).groups.items():
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
