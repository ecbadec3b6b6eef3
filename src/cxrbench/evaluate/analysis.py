"""Subgroup and calibration analyses of one split's predictions (``subgroups.json``, ``calibration.json``).

:func:`subgroup_analysis` joins the images' metadata (from the cache or index, by ``image_id``) and
runs :func:`cxrbench.stats.subgroups.subgroup_metrics` at the evaluation's thresholds;
:func:`calibration_analysis` runs :mod:`cxrbench.stats.calibration` per finding, optionally with a
recalibration map fitted on the validation predictions only (before/after). Both return the dict
written beside ``metrics.json`` by :func:`cxrbench.evaluate.run_eval.evaluate_run`. Formulas:
docs/statistics.md.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.metadata import (
    align_metadata,
    default_variables,
    metadata_columns,
    read_metadata,
    subgroup_arrays,
)
from cxrbench.evaluate.predictions import PredictionSet
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import calibration as cal
from cxrbench.stats.subgroups import DEFAULT_AGE_EDGES, subgroup_metrics

SUBGROUPS_FORMAT = "cxrbench.subgroups/1"
CALIBRATION_FORMAT = "cxrbench.calibration/1"


@dataclass(frozen=True)
class SubgroupOptions:
    """What :func:`subgroup_analysis` computes.

    ``variables``: metadata columns to split by (None: those of sex, age, view, dataset the metadata
    has); ``extra``: further columns (e.g. a csv source's ``site``); ``age_edges``: band edges in
    years; subgroups with fewer ``min_positives``/``min_negatives`` are marked ``too_few``;
    ``cluster``: resampling unit (patients by default); ``metadata``: a cache folder or index file
    (None: the run's cache); ``required``: without metadata, raise InputError (else skip).
    """

    variables: tuple[str, ...] | None = None
    extra: tuple[str, ...] = ()
    age_edges: tuple[float, ...] = DEFAULT_AGE_EDGES
    min_positives: int = 10
    min_negatives: int = 10
    prevalence_matched: bool = False
    cluster: str = "patient"
    metadata: str | None = None
    required: bool = True

    def resolved_variables(self, available: Sequence[str]) -> list[str]:
        """The variables to use given the metadata's columns (named ones must exist)."""
        base = default_variables(available) if self.variables is None else list(self.variables)
        return list(dict.fromkeys([*base, *self.extra]))


@dataclass(frozen=True)
class CalibrationOptions:
    """``n_bins`` equal-mass bins; ``recalibrate``: None, ``temperature``, ``platt`` or ``isotonic``;
    ``required``: scores that are not probabilities raise InputError (else the analysis is skipped);
    ``force``: fit a recalibration map even on fewer than ``stats.calibration.RECALIBRATION_MIN``
    validation positives or negatives (refused otherwise)."""

    n_bins: int = cal.DEFAULT_BINS
    recalibrate: str | None = None
    required: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        if int(self.n_bins) < 2:
            raise InputError(f"{self.n_bins} calibration bins", where="--calibration-bins",
                             fix="use 2 or more")
        if self.recalibrate is not None:
            check_choice("--recalibrate", self.recalibrate, cal.RECALIBRATION_METHODS)


def load_subgroup_metadata(ps: PredictionSet, options: SubgroupOptions,
                           source: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """Subgroup arrays aligned with ``ps`` (sorted image ids), and the variables used."""
    variables = options.resolved_variables(metadata_columns(source))
    if not variables:
        raise InputError("the metadata has none of the subgroup columns sex, age, view, dataset",
                         where=str(source), fix="name columns with --subgroup COLUMN")
    meta = align_metadata(ps.image_ids, read_metadata(source, variables), where=str(source))
    if options.variables is None and "dataset" in variables and "dataset" not in options.extra \
            and meta["dataset"].nunique(dropna=True) < 2:
        variables = [v for v in variables if v != "dataset"]  # one dataset: no subgroups to compare
        if not variables:
            raise InputError("the metadata has only one dataset and none of the subgroup columns sex, age, "
                             "view", where=str(source), fix="name columns with --subgroup COLUMN")
    return subgroup_arrays(meta, variables, options.age_edges), variables


def subgroup_analysis(ps: PredictionSet, thresholds: Sequence[float], groups: Mapping[str, np.ndarray], *,
                      options: SubgroupOptions = SubgroupOptions(), n_resamples: int = 1000, seed: int = 0,
                      ci_level: float = 0.95, memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                      source: str | None = None) -> dict[str, Any]:
    """The ``subgroups.json`` dict: settings, ``table``, ``gaps``, ``underdiagnosis`` (records)."""
    check_choice("cluster", options.cluster, bs.CLUSTERS)
    resamples = ps.resamples(int(n_resamples), int(seed), options.cluster) if n_resamples > 0 else None
    res = subgroup_metrics(ps.labels, ps.scores, ps.findings, groups, resamples,
                           np.asarray(thresholds, dtype=np.float64), min_positives=options.min_positives,
                           min_negatives=options.min_negatives, prevalence_matched=options.prevalence_matched,
                           ci_level=ci_level, memory_bytes=memory_bytes)
    doc = res.to_dict()
    doc["settings"].update({"age_edges": list(options.age_edges), "metadata": source,
                            "threshold_source": "the evaluation's thresholds (metrics.json)"})
    return {"format": SUBGROUPS_FORMAT, "n_images": ps.n, "image_order_hash": bs.ids_hash(ps.image_ids),
            **doc}


def calibration_analysis(ps: PredictionSet, val: PredictionSet | None = None, *,
                         options: CalibrationOptions = CalibrationOptions(), n_resamples: int = 1000,
                         seed: int = 0, cluster: str = "image", ci_level: float = 0.95,
                         memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                         same_split: bool = False) -> dict[str, Any]:
    """The ``calibration.json`` dict: per finding ECE and Brier (with bootstrap CIs), slope, intercept
    and the reliability curve; with ``options.recalibrate`` the same after the map fitted on ``val``."""
    if not cal.is_probability(ps.scores):
        raise InputError("scores are not probabilities in [0, 1]: calibration is undefined",
                         where=ps.where,
                         fix="write sigmoid probabilities as p_<finding>, or use --no-calibration")
    method = options.recalibrate
    if method is not None and val is None:
        raise InputError(f"--recalibrate {method} needs validation predictions", where=ps.where,
                         fix="evaluate a run that has a val split, or leave --recalibrate out")
    resamples = ps.resamples(int(n_resamples), int(seed), cluster) if n_resamples > 0 else None
    maps: dict[str, cal.Recalibration] = {}
    after = None
    warns: dict[str, str] = {}
    if method is not None and val is not None:
        for f in ps.findings:
            if f in val.findings:
                k = val.column(f)
                y = val.labels[:, k]
                fit, warns[f] = cal.recalibration_check(method, int((y == 1).sum()), int((y == 0).sum()),
                                                        options.force)
                if fit:
                    maps[f] = cal.fit_recalibration(method, y, val.scores[:, k])
        for f, text in warns.items():
            if text:
                warnings.warn(f"{ps.where}: {f}: {text}", stacklevel=2)
        after = np.column_stack([maps[f].apply(ps.scores[:, j]) if f in maps else ps.scores[:, j]
                                 for j, f in enumerate(ps.findings)])
    before_doc = _calibration_block(ps, ps.scores, resamples, options.n_bins, ci_level, memory_bytes)
    per_finding: dict[str, Any] = {}
    for j, f in enumerate(ps.findings):
        entry = {"n": int((~np.isnan(ps.labels[:, j])).sum()), **before_doc[j]}
        per_finding[f] = entry
    if after is not None:
        after_doc = _calibration_block(ps, after, resamples, options.n_bins, ci_level, memory_bytes)
        for j, f in enumerate(ps.findings):
            fitted = maps.get(f)
            per_finding[f]["recalibrated"] = {
                **after_doc[j], "method": method,
                "params": fitted.params if fitted is not None else {},
                "warning": warns.get(f, ""),
                "note": ("" if fitted is not None and fitted.params else
                         "not recalibrated (identity): " + warns[f] if warns.get(f) and fitted is None else
                         "no map could be fitted on validation (one class or separable): identity")}
    return {"format": CALIBRATION_FORMAT, "n_images": ps.n, "findings": list(ps.findings),
            "settings": {"n_bins": options.n_bins, "recalibrate": method, "ci_level": ci_level,
                         "binning": "equal-mass (quantile) bins",
                         "bootstrap": resamples.describe() if resamples is not None else None,
                         "recalibration_fitted_on": None if method is None else
                         ("the evaluated split itself (optimistic)" if same_split else "val"),
                         "recalibration_min": cal.RECALIBRATION_MIN,
                         "recalibration_warn": cal.RECALIBRATION_WARN,
                         "forced": bool(options.force)},
            "warnings": [f"{f}: {w}" for f, w in warns.items() if w],
            "per_finding": per_finding}


def _calibration_block(ps: PredictionSet, probs: np.ndarray, resamples: bs.Resamples | None, n_bins: int,
                       ci_level: float, memory_bytes: int) -> list[dict[str, Any]]:
    points = [cal.calibration_point(ps.labels[:, j], probs[:, j], n_bins) for j in range(len(ps.findings))]
    if resamples is None:
        boot = {"ece": np.zeros((0, len(ps.findings))), "brier": np.zeros((0, len(ps.findings)))}
    else:
        boot = cal.bootstrap_calibration(ps.labels, probs, resamples, n_bins, memory_bytes)
    out = []
    for j, pt in enumerate(points):
        out.append({"ece": bs.summarize(boot["ece"][:, j], pt["ece"], ci_level),
                    "brier": bs.summarize(boot["brier"][:, j], pt["brier"], ci_level),
                    "slope": pt["slope"], "intercept": pt["intercept"], "unstable": pt["unstable"],
                    "reliability": pt["reliability"]})
    return out


def calibration_table(doc: Mapping[str, Any]) -> pd.DataFrame:
    """One row per finding (and ``after`` rows with recalibration) from a ``calibration.json`` dict:
    ``finding, stage, ece, ece_lo, ece_hi, brier, brier_lo, brier_hi, slope, intercept``."""
    rows = []
    for f, entry in doc["per_finding"].items():
        for stage, block in (("before", entry), ("after", entry.get("recalibrated"))):
            if block is None:
                continue
            rows.append({"finding": f, "stage": stage, "method": block.get("method", ""),
                         "ece": block["ece"]["value"], "ece_lo": block["ece"]["ci_low"],
                         "ece_hi": block["ece"]["ci_high"], "brier": block["brier"]["value"],
                         "brier_lo": block["brier"]["ci_low"], "brier_hi": block["brier"]["ci_high"],
                         "slope": block["slope"], "intercept": block["intercept"],
                         "unstable": block.get("unstable", ""), "warning": block.get("warning", "")})
    return pd.DataFrame(rows)


def reliability_frame(doc: Mapping[str, Any]) -> pd.DataFrame:
    """Long reliability-curve data from a ``calibration.json`` dict:
    ``finding, stage, bin, n, mean_predicted, fraction_positive``."""
    rows = []
    for f, entry in doc["per_finding"].items():
        for stage, block in (("before", entry), ("after", entry.get("recalibrated"))):
            if block is None:
                continue
            rel = block["reliability"]
            for b, (n, mp, fp) in enumerate(zip(rel["n"], rel["mean_predicted"], rel["fraction_positive"],
                                                strict=True)):
                rows.append({"finding": f, "stage": stage, "bin": b, "n": n, "mean_predicted": mp,
                             "fraction_positive": fp})
    return pd.DataFrame(rows, columns=["finding", "stage", "bin", "n", "mean_predicted", "fraction_positive"])
