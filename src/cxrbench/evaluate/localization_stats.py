"""Statistics of scored saliency maps: per finding and metric the mean over the images, its
patient-bootstrap CI, the chance level and the paired difference against it; paired tests between
models scored on the same images.

Input: the long rows of :func:`cxrbench.evaluate.localization.localization_rows` (``image_id,
patient_id, finding, metric, value, chance, area``; one row per image, finding and metric). The
resamples are those of :mod:`cxrbench.stats.bootstrap` over every scored image sorted by id
(patients by default), restricted to each finding's images (:func:`cxrbench.stats.localization.
resampled_means`); the ``mean`` finding is the unweighted mean over the findings, on the full set and
on every resample. Against chance: ``diff = value - chance`` with the percentile CI of the resampled
differences and the two-sided bootstrap p (:func:`cxrbench.stats.significance.bootstrap_p_value`).
Between models: :func:`cxrbench.stats.significance.paired_bootstrap` of their resampled means,
Benjamini-Hochberg over the findings of each pair and metric.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice, check_columns
from cxrbench.stats import bootstrap as bs
from cxrbench.stats.localization import resampled_means
from cxrbench.stats.significance import benjamini_hochberg, bootstrap_p_value, paired_bootstrap

ROW_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "finding", "metric", "value", "chance", "area")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "finding", "metric", "n_images", "n_patients", "area", "value", "lo", "hi", "chance", "chance_lo",
    "chance_hi", "diff", "diff_lo", "diff_hi", "p",
)
PAIR_COLUMNS: tuple[str, ...] = (
    "model_a", "model_b", "finding", "metric", "n_images", "value_a", "value_b", "diff", "diff_lo", "diff_hi",
    "p", "p_adjusted",
)
MEAN = "mean"
_CELLS_PER_CHUNK = 32 * 2**20  # resample x image counts held at once


class _Scored:
    """One model's rows in array form: per (finding, metric) the values and chances in member order."""

    def __init__(self, rows: pd.DataFrame, where: str) -> None:
        check_columns(rows.columns, ROW_COLUMNS, where)
        if rows.empty:
            raise InputError("no image was scored (no region of a predicted finding in the split)",
                             where=where, fix="score a split whose images have boxes or masks")
        images = rows.drop_duplicates("image_id").sort_values("image_id", kind="stable")
        self.image_ids = images["image_id"].astype(str).to_numpy()
        self.patient_ids = images["patient_id"].astype(str).to_numpy()
        position = pd.Index(self.image_ids)
        self.findings = list(dict.fromkeys(rows["finding"].astype(str)))
        self.metrics = list(dict.fromkeys(rows["metric"].astype(str)))
        self.cells: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
        for (f, m), g in rows.groupby(["finding", "metric"], sort=False):
            g = g.sort_values("image_id", kind="stable")
            members = position.get_indexer(g["image_id"].astype(str))
            self.cells[(str(f), str(m))] = (members, g["value"].to_numpy(np.float64),
                                            g["chance"].to_numpy(np.float64), float(g["area"].mean()))

    def resamples(self, n_resamples: int, seed: int, cluster: str) -> bs.Resamples:
        return bs.make_resamples(self.image_ids, self.patient_ids, n_resamples, seed, cluster)

    def resampled(self, resamples: bs.Resamples | None,
                  ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
        """(finding, metric) -> (resampled means of value, of chance), each (B,); the ``mean`` finding
        included."""
        if resamples is None:
            return {}
        out: dict[tuple[str, str], list[list[np.ndarray]]] = {k: [[], []] for k in self.cells}
        size = max(1, _CELLS_PER_CHUNK // max(1, resamples.n_items))
        for _, counts in resamples.chunks(size):
            for key, (members, value, chance, _) in self.cells.items():
                out[key][0].append(resampled_means(value, members, counts))
                out[key][1].append(resampled_means(chance, members, counts))
        done = {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in out.items()}
        for m in self.metrics:
            keys = [(f, m) for f in self.findings if (f, m) in done]
            with np.errstate(invalid="ignore"):
                done[(MEAN, m)] = (np.nanmean(np.stack([done[k][0] for k in keys]), axis=0),
                                   np.nanmean(np.stack([done[k][1] for k in keys]), axis=0))
        return done

    def point(self, finding: str, metric: str) -> tuple[float, float, float, int, int]:
        """(value, chance, area, images, patients) of a finding (``mean``: over the findings)."""
        if finding == MEAN:
            parts = [self.point(f, metric) for f in self.findings if (f, metric) in self.cells]
            return (float(np.mean([p[0] for p in parts])), float(np.mean([p[1] for p in parts])),
                    float(np.mean([p[2] for p in parts])), len(self.image_ids), len(set(self.patient_ids)))
        members, value, chance, area = self.cells[(finding, metric)]
        return (float(value.mean()), float(chance.mean()), area, int(members.size),
                int(np.unique(self.patient_ids[members]).size))


def _ci(values: np.ndarray | None, ci_level: float) -> tuple[float, float]:
    if values is None:
        return float("nan"), float("nan")
    s = bs.summarize(values, float("nan"), ci_level)
    return s["ci_low"], s["ci_high"]


def summarize_localization(rows: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0,
                           cluster: str = "patient", ci_level: float = 0.95,
                           where: str = "localization") -> pd.DataFrame:
    """Per finding (and ``mean``) and metric: the mean score with its bootstrap CI, the chance level
    with its CI, and the paired difference against chance (CI, two-sided p); columns
    :data:`SUMMARY_COLUMNS`. ``n_resamples = 0``: point estimates only."""
    check_choice("--cluster", cluster, bs.CLUSTERS)
    scored = _Scored(rows, where)
    res = scored.resampled(scored.resamples(n_resamples, seed, cluster) if n_resamples > 0 else None)
    out = []
    findings = scored.findings + ([MEAN] if len(scored.findings) > 1 else [])
    for f in findings:
        for m in scored.metrics:
            if f != MEAN and (f, m) not in scored.cells:
                continue
            value, chance, area, n_img, n_pat = scored.point(f, m)
            boot = res.get((f, m))
            lo, hi = _ci(boot[0] if boot else None, ci_level)
            c_lo, c_hi = _ci(boot[1] if boot else None, ci_level)
            d_lo, d_hi = _ci(boot[0] - boot[1] if boot else None, ci_level)
            p = bootstrap_p_value(boot[0] - boot[1]) if boot else float("nan")
            out.append((f, m, n_img, n_pat, area, value, lo, hi, chance, c_lo, c_hi, value - chance, d_lo,
                        d_hi, p))
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def compare_localization(rows: Mapping[str, pd.DataFrame], reference: str | None = None, *,
                         n_resamples: int = 1000, seed: int = 0, cluster: str = "patient",
                         ci_level: float = 0.95, alternative: str = "two-sided",
                         fdr: str = "bh") -> pd.DataFrame:
    """Paired tests between models (``{name: rows}``, scored on the same images): per pair (every pair,
    or each against ``reference``), finding (and ``mean``) and metric the difference of the means with
    its paired-bootstrap CI and p, BH-adjusted over the findings of the pair and metric (``fdr="bh"``);
    columns :data:`PAIR_COLUMNS`."""
    from cxrbench.evaluate.compare import comparison_pairs

    check_choice("--fdr", fdr, ("bh", "none"))
    if len(rows) < 2:
        raise InputError("paired tests need two or more models", where="localization",
                         fix="score the localization of another init on the same split")
    if n_resamples < 1:
        raise InputError("paired tests need bootstrap resamples", where="--bootstrap", fix="use 1 or more")
    scored = {name: _Scored(df, f"localization of {name}") for name, df in rows.items()}
    names = list(scored)
    first = scored[names[0]]
    for name in names[1:]:
        _check_same(first, scored[name], names[0], name)
    resamples = first.resamples(n_resamples, seed, cluster)
    boots = {name: s.resampled(resamples) for name, s in scored.items()}
    out: list[dict[str, Any]] = []
    for a, b in comparison_pairs(names, reference):
        for m in first.metrics:
            block = []
            for f in first.findings + ([MEAN] if len(first.findings) > 1 else []):
                pa, pb = scored[a].point(f, m), scored[b].point(f, m)
                test = paired_bootstrap(boots[a][(f, m)][0], boots[b][(f, m)][0], pa[0], pb[0],
                                        alternative=alternative, ci_level=ci_level)
                block.append({"model_a": a, "model_b": b, "finding": f, "metric": m, "n_images": pa[3],
                              "value_a": pa[0], "value_b": pb[0], "diff": test["diff"],
                              "diff_lo": test["diff_lo"], "diff_hi": test["diff_hi"],
                              "p": test["p_bootstrap"]})
            p = np.array([r["p"] for r in block if r["finding"] != MEAN], dtype=np.float64)
            adjusted = iter(benjamini_hochberg(p) if fdr == "bh" else p)
            for r in block:
                r["p_adjusted"] = r["p"] if r["finding"] == MEAN else float(next(adjusted))
            out += block
    table = pd.DataFrame(out, columns=list(PAIR_COLUMNS))
    table.attrs.update({"n_resamples": n_resamples, "seed": seed, "cluster": cluster, "fdr": fdr,
                        "alternative": alternative})
    return table


def _check_same(a: _Scored, b: _Scored, name_a: str, name_b: str) -> None:
    """Refuse two models scored on different images or regions (no pairing possible)."""
    if not np.array_equal(a.image_ids, b.image_ids) or set(a.cells) != set(b.cells):
        raise InputError(f"{name_a} and {name_b} were scored on different images or findings",
                         where="localization",
                         fix="score every model on the same cache split with the same regions and levels")
    for key, (members, *_rest) in a.cells.items():
        if not np.array_equal(members, b.cells[key][0]):
            raise InputError(f"{name_a} and {name_b} were scored on different images of {key[0]}",
                             where="localization", fix="score every model on the same cache split")
