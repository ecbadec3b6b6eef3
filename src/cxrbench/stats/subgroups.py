"""Per-subgroup metrics with shared bootstrap resamples: AUROC, AP, operating point, gaps, underdiagnosis.

Subgroup variables are arrays aligned with the evaluated images (sex, age band, view, dataset/site,
any index column). For every variable, subgroup and finding: image and class counts, prevalence,
AUROC, average precision, and sensitivity, specificity, PPV and NPV at a given (validation)
threshold, each with a bootstrap percentile CI. A subgroup with fewer than ``min_positives``
positives or ``min_negatives`` negatives is kept in the table and marked ``too_few`` (never hidden).

**Resamples.** The bootstrap resamples of the whole evaluated set (:class:`cxrbench.stats.bootstrap.
Resamples`, patient clusters by default) are restricted to each subgroup: subgroup ``g`` on resample
``b`` is the images of ``g`` with their counts in ``b``. Every subgroup, variable and model evaluated
on the same images therefore sees the same resamples, so differences between subgroups (gaps) and
between models are paired. Each value equals the metric on the explicitly resampled subgroup.

**Largest gap.** Per variable, finding and metric, the subgroups with the highest and lowest value on
the full split (among those not ``too_few`` and not ``unknown``); the gap ``high - low`` gets the
percentile CI of the paired per-resample differences and the two-sided bootstrap p of
:func:`cxrbench.stats.significance.bootstrap_p_value`. The pair is chosen by the data, so
``p_bonferroni`` multiplies p by the number of pairs, ``G (G - 1) / 2``.

**Underdiagnosis** (Seyyed-Kalantari et al., Nat Med 2021): the false-positive rate of ``no_finding``
among the images that have a finding (``y_no_finding = 0``), i.e. ``1 - specificity`` of
``no_finding`` at its threshold, per subgroup, when ``no_finding`` is among the findings.

**Prevalence matching** (``prevalence_matched=True``): within each subgroup the positives are
re-weighted so that the subgroup's prevalence equals the finding's prevalence on the whole set, on
the full split and on every resample (the expectation of resampling to matched prevalence, without
new random draws). AUROC, sensitivity and specificity do not depend on prevalence; AP, PPV and NPV
are then comparable across subgroups.

Cost: per variable about one AUROC pass over all images (subgroups partition the images); AP and the
thresholded counts come from the positives' cumulative weights (see ``bench/subgroups.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt

# the bootstrap engine's building blocks (same stage): one finding's sort, a chunk's weighted AUROC
from cxrbench.stats.bootstrap import _auroc_chunk, _cumsum_pad, _prepare
from cxrbench.stats.significance import bootstrap_p_value

UNKNOWN = "unknown"
DEFAULT_AGE_EDGES: tuple[float, ...] = (40.0, 60.0, 80.0)
SUBGROUP_METRICS: tuple[str, ...] = ("auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv")
GAP_METRICS: tuple[str, ...] = ("auroc", "average_precision", "sensitivity", "specificity")
NO_FINDING = "no_finding"
UNDERDIAGNOSIS = "underdiagnosis"


def age_bands(age: Sequence[float] | np.ndarray, edges: Sequence[float] = DEFAULT_AGE_EDGES) -> np.ndarray:
    """Age in years -> band labels: edges (40, 60, 80) give ``<40``, ``40-60``, ``60-80``, ``>=80``.

    A band includes its lower edge (60 is in ``60-80``); a missing age (NaN) is ``unknown``.
    """
    edges = [float(e) for e in edges]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"age band edges must be increasing, got {edges}")
    a = np.asarray(pd.to_numeric(pd.Series(np.asarray(age, dtype=object)), errors="coerce"), dtype=np.float64)
    names = [f"<{_num(edges[0])}"]
    names += [f"{_num(lo)}-{_num(hi)}" for lo, hi in zip(edges, edges[1:], strict=False)]
    names.append(f">={_num(edges[-1])}")
    idx = np.searchsorted(np.asarray(edges), a, side="right")
    out = np.asarray(names, dtype=object)[np.clip(idx, 0, len(edges))]
    out[np.isnan(a)] = UNKNOWN
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def subgroup_labels(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Values of a subgroup column as text labels; missing (None, NaN, empty) -> ``unknown``."""
    s = pd.Series(np.asarray(values, dtype=object))
    missing = s.isna().to_numpy() | (s.astype(str).str.strip() == "").to_numpy()
    out = s.astype(str).str.strip().to_numpy(dtype=object)
    out[missing] = UNKNOWN
    return out


@dataclass
class SubgroupResult:
    """Tables of :func:`subgroup_metrics` (plain DataFrames, one row per entry)."""

    table: pd.DataFrame
    gaps: pd.DataFrame
    underdiagnosis: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)
    samples: dict[tuple[str, str, str, str], np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings plus the three tables as lists of records (NaN stays NaN: use json_safe)."""
        return {"settings": self.settings, "table": _records(self.table), "gaps": _records(self.gaps),
                "underdiagnosis": _records(self.underdiagnosis)}


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]


@dataclass(frozen=True)
class _Group:
    """One (variable, subgroup, finding): its sorted known labels and threshold positions."""

    variable: str
    name: str
    finding: int
    prep: Any  # bootstrap._Prepared over the group's known images (global item indices)
    pos_last: np.ndarray  # per positive (descending score): positives scoring >= it
    at_thr: tuple[int, int] | None  # (positives, negatives) scoring >= the threshold


def _group(variable: str, name: str, j: int, y: np.ndarray, s: np.ndarray, members: np.ndarray,
           threshold: float) -> _Group:
    y_in = np.where(members, y, np.nan)
    prep = _prepare(y_in, s)
    ps = s[prep.pos]
    # positives are in descending score order; those scoring >= s_k are the ones up to its last tie
    pos_last = np.searchsorted(-ps, -ps, side="right").astype(prep.pos.dtype)
    at = None
    if np.isfinite(threshold) or threshold == np.inf:
        at = (int(np.sum(ps >= threshold)), int(np.sum(s[prep.neg] >= threshold)))
    return _Group(variable, name, j, prep, pos_last, at)


def _chunk_values(g: _Group, counts: np.ndarray, match: np.ndarray | None) -> dict[str, np.ndarray]:
    """Every subgroup metric on each resample of ``counts`` (c, n) for one group and finding.

    ``match``: (c,) target prevalence per resample (prevalence matching) or None.
    """
    p = g.prep
    auc, w_pos, w_neg, fp = _auroc_chunk(p, counts)
    tp = _cumsum_pad(np.take(counts, p.pos, axis=1))
    ok = (w_pos > 0) & (w_neg > 0)
    wp, wn = w_pos.astype(np.float64), w_neg.astype(np.float64)
    if match is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(ok, match * wn / ((1.0 - match) * wp), np.nan)[:, None]
    else:
        r = None
    out: dict[str, np.ndarray] = {"auroc": auc}
    if p.pos.size:
        tp_k = np.take(tp, g.pos_last, axis=1).astype(np.float64)
        fp_k = np.take(fp, p.neg_ge if p.neg_ge is not None else p.neg_gt, axis=1).astype(np.float64)
        if r is not None:
            tp_k *= r
        den = tp_k + fp_k
        prec = np.divide(tp_k, den, out=np.zeros_like(den), where=den > 0)
        prec *= np.diff(tp, axis=1)  # the positive's own weight
        with np.errstate(divide="ignore", invalid="ignore"):
            out["average_precision"] = np.where(ok, prec.sum(axis=1) / wp, np.nan)
    else:
        out["average_precision"] = np.full(counts.shape[0], np.nan)
    if g.at_thr is None:
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            out[name] = np.full(counts.shape[0], np.nan)
        return out
    tp_t = tp[:, g.at_thr[0]].astype(np.float64)
    fp_t = fp[:, g.at_thr[1]].astype(np.float64)
    fn_t, tn_t = wp - tp_t, wn - fp_t
    if r is not None:
        tp_t, fn_t = tp_t * r[:, 0], fn_t * r[:, 0]
    tm = mt.threshold_metrics(tp_t, fp_t, tn_t, fn_t)
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        out[name] = np.where(ok, tm[name], np.nan)
    return out


def subgroup_metrics(labels: np.ndarray, scores: np.ndarray, findings: Sequence[str],
                     groups: Mapping[str, Sequence[Any] | np.ndarray], resamples: bs.Resamples | None = None,
                     thresholds: np.ndarray | Sequence[float] | None = None, *, min_positives: int = 10,
                     min_negatives: int = 10, prevalence_matched: bool = False, ci_level: float = 0.95,
                     memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                     keep_samples: bool = False) -> SubgroupResult:
    """Metrics of every subgroup of every variable in ``groups``, with CIs from ``resamples``.

    ``labels``, ``scores``: (n, K) (1/0/NaN labels) in the order the resamples were made for;
    ``groups``: variable name -> (n,) labels (see :func:`subgroup_labels`, :func:`age_bands`);
    ``thresholds``: (K,) decision thresholds (NaN = none: no thresholded metrics for that finding).
    ``resamples=None`` gives point estimates only. ``keep_samples`` keeps the per-resample values
    in ``result.samples[(variable, subgroup, finding, metric)]`` (B,).
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    n, k = labels.shape
    findings = [str(f) for f in findings]
    if scores.shape != (n, k) or len(findings) != k:
        raise ValueError(f"labels {labels.shape}, scores {scores.shape} and {len(findings)} findings "
                         "disagree")
    thr = np.full(k, np.nan) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if resamples is not None and resamples.n_items != n:
        raise ValueError(f"resamples cover {resamples.n_items} images but the arrays have {n}")
    variables = {str(v): subgroup_labels(vals) for v, vals in groups.items()}
    for v, vals in variables.items():
        if vals.shape != (n,):
            raise ValueError(f"subgroup variable {v!r} has {vals.shape[0]} values for {n} images")
    specs: list[_Group] = []
    rows: list[dict[str, Any]] = []
    for v, vals in variables.items():
        for name in _ordered(np.unique(vals.astype(str))):
            members = vals == name
            for j, f in enumerate(findings):
                specs.append(_group(v, name, j, labels[:, j], scores[:, j], members, thr[j]))
                c = mt.class_counts(np.where(members, labels[:, j], np.nan))
                rows.append({"variable": v, "subgroup": name, "finding": f, "n_images": int(members.sum()),
                             "n": c["n"], "n_positive": c["n_positive"], "n_negative": c["n_negative"]})
    pos_all = (labels == 1.0).astype(np.float32)
    neg_all = (labels == 0.0).astype(np.float32)
    ones = np.ones((1, n), dtype=np.uint8)
    match_pt = _overall_prevalence(ones, pos_all, neg_all) if prevalence_matched else None
    points = [_chunk_values(g, ones, None if match_pt is None else match_pt[:, g.finding]) for g in specs]
    boot: list[dict[str, np.ndarray]] | None = None
    if resamples is not None:
        b_total = resamples.n_resamples
        boot = [{m: np.full(b_total, np.nan) for m in SUBGROUP_METRICS} for _ in specs]
        for start, counts in resamples.chunks(bs.chunk_size(n, b_total, memory_bytes)):
            rows_ = slice(start, start + counts.shape[0])
            match = _overall_prevalence(counts, pos_all, neg_all) if prevalence_matched else None
            for i, g in enumerate(specs):
                chunk = _chunk_values(g, counts, None if match is None else match[:, g.finding])
                for m in SUBGROUP_METRICS:
                    boot[i][m][rows_] = chunk[m]
    table = _table(rows, specs, points, boot, thr, min_positives, min_negatives, ci_level)
    settings = {"variables": list(variables), "min_positives": int(min_positives),
                "min_negatives": int(min_negatives), "prevalence_matched": bool(prevalence_matched),
                "ci_level": ci_level, "bootstrap": resamples.describe() if resamples is not None else None,
                "metrics": list(SUBGROUP_METRICS)}
    samples = {}
    if boot is not None:
        samples = {(g.variable, g.name, findings[g.finding], m): boot[i][m]
                   for i, g in enumerate(specs) for m in SUBGROUP_METRICS}
    gaps = _gaps(table, samples, findings, ci_level)
    under = _underdiagnosis(table, samples, ci_level)
    if "no_finding" in findings:
        gaps = pd.concat([gaps, _under_gaps(under, samples, ci_level)], ignore_index=True)
    return SubgroupResult(table=table, gaps=gaps, underdiagnosis=under, settings=settings,
                          samples=samples if keep_samples else {})


def _ordered(names: np.ndarray) -> list[str]:
    """Subgroup names in a readable order: age bands by their lower edge, ``unknown`` last."""
    def key(name: str):
        if name == UNKNOWN:
            return (2, 0.0, name)
        text = name.lstrip("<>=")
        head = text.split("-")[0]
        try:
            return (0, float(head) - (0.5 if name.startswith("<") else 0.0), name)
        except ValueError:
            return (1, 0.0, name)
    return sorted((str(x) for x in names), key=key)


def _overall_prevalence(counts: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """(c, K) prevalence of each finding on each resample of the whole set."""
    w = counts.astype(np.float32)
    wp, wn = (w @ pos).astype(np.float64), (w @ neg).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return wp / (wp + wn)


def _table(rows: list[dict], specs: list[_Group], points: list[dict], boot: list[dict] | None,
           thr: np.ndarray, min_pos: int, min_neg: int, ci_level: float) -> pd.DataFrame:
    alpha = (1.0 - ci_level) / 2.0
    for i, (row, g) in enumerate(zip(rows, specs, strict=True)):
        row["prevalence"] = row["n_positive"] / row["n"] if row["n"] else float("nan")
        row["threshold"] = float(thr[g.finding])
        few = row["n_positive"] < min_pos or row["n_negative"] < min_neg
        row["too_few"] = bool(few)
        notes = []
        if few:
            notes.append(f"too few: {row['n_positive']} positive(s), {row['n_negative']} negative(s) "
                         f"(needs {min_pos} and {min_neg})")
        for m in SUBGROUP_METRICS:
            row[m] = float(points[i][m][0])
            lo = hi = float("nan")
            if boot is not None:
                used = boot[i][m][~np.isnan(boot[i][m])]
                if used.size:
                    lo, hi = (float(x) for x in np.quantile(used, [alpha, 1.0 - alpha]))
            row[f"{m}_lo"], row[f"{m}_hi"] = lo, hi
        if boot is not None:
            row["resamples_one_class"] = int(np.isnan(boot[i]["auroc"]).sum())
        if not row["n_positive"] or not row["n_negative"]:
            notes.append("not estimable: " + ("no known labels" if not row["n"] else
                                               "no positives" if not row["n_positive"] else "no negatives"))
        if row["subgroup"] == UNKNOWN:
            notes.append("value missing in the metadata; left out of the gaps")
        row["note"] = "; ".join(notes)
    return pd.DataFrame(rows)


def _gap_row(variable: str, finding: str, metric: str, cands: pd.DataFrame, value_col: str,
             samples: Mapping, sample_key, ci_level: float) -> dict[str, Any]:
    row: dict[str, Any] = {"variable": variable, "finding": finding, "metric": metric,
                           "n_groups": int(len(cands))}
    if len(cands) < 2:
        row["note"] = (f"not estimable: {len(cands)} subgroup(s) with enough positives and negatives, a gap "
                       "needs two")
        return row
    hi_row = cands.loc[cands[value_col].idxmax()]
    lo_row = cands.loc[cands[value_col].idxmin()]
    row.update({"high_group": hi_row["subgroup"], "low_group": lo_row["subgroup"],
                "high": float(hi_row[value_col]), "low": float(lo_row[value_col]),
                "gap": float(hi_row[value_col] - lo_row[value_col])})
    pairs = len(cands) * (len(cands) - 1) // 2
    a, b = samples.get(sample_key(hi_row["subgroup"])), samples.get(sample_key(lo_row["subgroup"]))
    if a is not None and b is not None:
        d = a - b
        used = d[~np.isnan(d)]
        alpha = (1.0 - ci_level) / 2.0
        if used.size:
            row["gap_lo"], row["gap_hi"] = (float(x) for x in np.quantile(used, [alpha, 1.0 - alpha]))
        p = bootstrap_p_value(d)
        row["p_value"] = p
        row["p_bonferroni"] = min(1.0, p * pairs) if np.isfinite(p) else float("nan")
        row["n_resamples_used"] = int(used.size)
    row["note"] = f"highest minus lowest of {len(cands)} subgroups; Bonferroni over {pairs} pair(s)"
    return row


GAP_COLUMNS = ("variable", "finding", "metric", "n_groups", "high_group", "low_group", "high", "low", "gap",
               "gap_lo", "gap_hi", "p_value", "p_bonferroni", "n_resamples_used", "note")


def _gaps(table: pd.DataFrame, samples: Mapping, findings: list[str], ci_level: float) -> pd.DataFrame:
    rows = []
    ok = table[~table["too_few"] & (table["subgroup"] != UNKNOWN)]
    for (v, f), sub in ok.groupby(["variable", "finding"], sort=False):
        for m in GAP_METRICS:
            cands = sub[np.isfinite(sub[m].to_numpy(dtype=np.float64))]
            rows.append(_gap_row(v, f, m, cands, m, samples,
                                 lambda name, v=v, f=f, m=m: (v, name, f, m), ci_level))
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))


UNDER_COLUMNS = ("variable", "subgroup", "n_with_finding", "n_no_finding", "threshold", "underdiagnosis",
                 "underdiagnosis_lo", "underdiagnosis_hi", "too_few", "note")


def _underdiagnosis(table: pd.DataFrame, samples: Mapping, ci_level: float) -> pd.DataFrame:
    """1 - specificity of no_finding per subgroup: share of images with a finding called 'no finding'."""
    nf = table[table["finding"] == NO_FINDING]
    alpha = (1.0 - ci_level) / 2.0
    rows = []
    for r in nf.to_dict(orient="records"):
        rate = 1.0 - r["specificity"] if np.isfinite(r["specificity"]) else float("nan")
        lo = hi = float("nan")
        key = (r["variable"], r["subgroup"], NO_FINDING, "specificity")
        if key in samples:
            used = 1.0 - samples[key][~np.isnan(samples[key])]
            if used.size:
                lo, hi = (float(x) for x in np.quantile(used, [alpha, 1.0 - alpha]))
        rows.append({"variable": r["variable"], "subgroup": r["subgroup"], "n_with_finding": r["n_negative"],
                     "n_no_finding": r["n_positive"], "threshold": r["threshold"], "underdiagnosis": rate,
                     "underdiagnosis_lo": lo, "underdiagnosis_hi": hi, "too_few": r["too_few"],
                     "note": r["note"]})
    return pd.DataFrame(rows, columns=list(UNDER_COLUMNS))


def _under_gaps(under: pd.DataFrame, samples: Mapping, ci_level: float) -> pd.DataFrame:
    rows = []
    ok = under[~under["too_few"] & (under["subgroup"] != UNKNOWN)]
    flipped = {key: 1.0 - val for key, val in samples.items()
               if key[2] == NO_FINDING and key[3] == "specificity"}
    for v, sub in ok.groupby("variable", sort=False):
        cands = sub[np.isfinite(sub["underdiagnosis"].to_numpy(dtype=np.float64))]
        rows.append(_gap_row(v, NO_FINDING, UNDERDIAGNOSIS, cands, "underdiagnosis", flipped,
                             lambda name, v=v: (v, name, NO_FINDING, "specificity"), ci_level))
    return pd.DataFrame(rows, columns=list(GAP_COLUMNS))
