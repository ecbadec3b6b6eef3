"""The shortcut baseline: a metadata-only model that never sees a pixel.

For each finding, a logistic regression on the image's metadata (one-hot view, sex and
dataset/site, standardized age and its square with a missing-age indicator; any other index
column named, one-hot) is fitted on the **train** split of a cache or index and scored on the other
splits. Its predictions are written as Contract-4 files, so ``cxrbench evaluate`` and ``cxrbench
compare`` treat it like any run. :func:`shortcut_check` tests, with the paired bootstrap of
:mod:`cxrbench.evaluate.compare`, whether an image model beats it; a model that does not has
possibly learned the acquisition (AP vs PA, the site) instead of the finding.

Fit: scikit-learn ``LogisticRegression`` (L2, C = 1 on standardized features, lbfgs); a level seen
only at test time gets all-zero one-hot columns; a finding with one class in train is predicted at
its train prevalence (noted).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.layout import SHORTCUT_MODEL, predictions_path
from cxrbench.evaluate.metadata import metadata_columns, read_metadata
from cxrbench.evaluate.predictions import PredictionSet, write_predictions

DEFAULT_FEATURES: tuple[str, ...] = ("view", "sex", "dataset", "age")
NUMERIC_FEATURES: tuple[str, ...] = ("age",)
SHORTCUT_FORMAT = "cxrbench.shortcut/1"


@dataclass(frozen=True)
class ShortcutModel:
    """A fitted metadata-only model: features, their encoding, and one logistic fit per finding."""

    features: list[str]
    categories: dict[str, list[str]]
    numeric: dict[str, list[float]]  # feature -> [mean, std] on train
    findings: list[str]
    coef: dict[str, list[float]]
    intercept: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)

    def design(self, meta: pd.DataFrame) -> np.ndarray:
        """(n, d) float64 design matrix of ``meta`` (one row per image)."""
        cols = []
        for f in self.features:
            if f in self.numeric:
                mean, std = self.numeric[f]
                x = pd.to_numeric(meta[f], errors="coerce").to_numpy(dtype=np.float64)
                miss = np.isnan(x)
                z = np.where(miss, 0.0, (x - mean) / std)
                cols += [z, z * z, miss.astype(np.float64)]
            else:
                values = _text(meta[f])
                cols += [(values == level).astype(np.float64) for level in self.categories[f]]
        return np.column_stack(cols) if cols else np.zeros((len(meta), 0))

    def predict(self, meta: pd.DataFrame) -> np.ndarray:
        """(n, K) probabilities of each finding."""
        x = self.design(meta)
        out = np.empty((len(meta), len(self.findings)))
        for k, f in enumerate(self.findings):
            z = self.intercept[f] + (x @ np.asarray(self.coef[f]) if x.shape[1] else 0.0)
            out[:, k] = 1.0 / (1.0 + np.exp(-z))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (what ``shortcut.json`` holds)."""
        return {"format": SHORTCUT_FORMAT, **asdict(self)}


def _text(series: pd.Series) -> np.ndarray:
    values = series.astype(object).where(series.notna(), "unknown").astype(str).to_numpy(dtype=object)
    return values


def fit_shortcut(meta: pd.DataFrame, labels: np.ndarray, findings: Sequence[str],
                 features: Sequence[str] = DEFAULT_FEATURES, c: float = 1.0) -> ShortcutModel:
    """Fit one logistic regression per finding on the train rows ``meta`` / ``labels`` (n, K; NaN masked).

    Features constant on train carry no information and are dropped (recorded in ``notes``).
    """
    from sklearn.linear_model import LogisticRegression

    findings = list(findings)
    used: list[str] = []
    categories: dict[str, list[str]] = {}
    numeric: dict[str, list[float]] = {}
    notes: dict[str, str] = {}
    for f in features:
        if f in NUMERIC_FEATURES:
            x = pd.to_numeric(meta[f], errors="coerce").to_numpy(dtype=np.float64)
            if np.isfinite(x).sum() < 2 or np.nanstd(x) == 0:
                notes[f] = "constant or missing on train: not used"
                continue
            numeric[f] = [float(np.nanmean(x)), float(np.nanstd(x))]
        else:
            levels = sorted(set(_text(meta[f])))
            if len(levels) < 2:
                notes[f] = f"one value on train ({levels[0] if levels else 'none'}): not used"
                continue
            categories[f] = levels
        used.append(f)
    model = ShortcutModel(used, categories, numeric, findings, {}, {}, notes)
    x = model.design(meta)
    for k, f in enumerate(findings):
        y = np.asarray(labels[:, k], dtype=np.float64)
        known = ~np.isnan(y)
        yk = y[known]
        if yk.size == 0 or yk.min() == yk.max() or x.shape[1] == 0:
            prev = float(yk.mean()) if yk.size else 0.5
            prev = min(max(prev, 1e-6), 1 - 1e-6)
            model.coef[f] = [0.0] * x.shape[1]
            model.intercept[f] = float(np.log(prev / (1 - prev)))
            notes[f] = "one class (or no usable feature) on train: predicted at the train prevalence"
            continue
        lr = LogisticRegression(C=c, max_iter=2000).fit(x[known], yk.astype(int))
        model.coef[f] = [float(v) for v in lr.coef_[0]]
        model.intercept[f] = float(lr.intercept_[0])
    return model


def _source_findings(source: Path) -> list[str]:
    from cxrbench.common.layout import CACHE_INDEX
    from cxrbench.index.schema import read_findings

    return read_findings(source / CACHE_INDEX if source.is_dir() else source)


def shortcut_predictions(source: str | os.PathLike, findings: Sequence[str] | None = None,
                         features: Sequence[str] | None = None, splits: Sequence[str] = ("val", "test"),
                         ) -> tuple[dict[str, pd.DataFrame], ShortcutModel]:
    """Fit on the train split of ``source`` (cache folder or index .parquet); Contract-4 frames per split.

    ``features=None``: the default features the index has (view, sex, dataset, age).
    """
    source = Path(source)
    available = metadata_columns(source)
    all_findings = _source_findings(source)
    findings = list(all_findings if findings is None else findings)
    unknown = [f for f in findings if f not in all_findings]
    if unknown:
        raise InputError(f"finding(s) {', '.join(unknown)} are not in the index", where=str(source),
                         fix=f"findings: {', '.join(all_findings)}")
    feats = [f for f in DEFAULT_FEATURES if f in available] if features is None else list(features)
    meta = read_metadata(source, [*feats, *findings])
    split = meta["split"].astype(str).to_numpy()
    train = split == "train"
    if not train.any():
        raise InputError("the index has no train split to fit the shortcut baseline on", where=str(source),
                         fix="use the cache/index the image models were trained on")
    labels = meta[findings].to_numpy(dtype=np.float64, na_value=np.nan)
    model = fit_shortcut(meta[train].reset_index(drop=True), labels[train], findings, feats)
    out: dict[str, pd.DataFrame] = {}
    for name in splits:
        rows = split == name
        if not rows.any():
            continue
        sub = meta[rows].reset_index(drop=True)
        p = model.predict(sub)
        cols: dict[str, Any] = {"image_id": sub["image_id"].astype(str),
                                "patient_id": sub["patient_id"].astype(str)}
        cols.update({f"p_{f}": p[:, k] for k, f in enumerate(findings)})
        cols.update({f"y_{f}": labels[rows, k] for k, f in enumerate(findings)})
        out[name] = pd.DataFrame(cols)
    return out, model


def write_shortcut(source: str | os.PathLike, out: str | os.PathLike, findings: Sequence[str] | None = None,
                   features: Sequence[str] | None = None, splits: Sequence[str] = ("val", "test"),
                   ) -> dict[str, Path]:
    """Write the baseline as a run-like folder: ``OUT/shortcut.json``, ``OUT/eval/SPLIT/predictions.parquet``.

    ``OUT`` must be new, empty, or a previous shortcut folder (only its own files are replaced).
    Returns split -> predictions path.
    """
    from cxrbench.common.fileio import atomic_write_json
    from cxrbench.common.provenance import provenance

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SHORTCUT_MODEL).is_file())):
        raise InputError("the output exists and is not a shortcut-baseline folder", where=str(out),
                         fix="choose a new folder (or a previous `cxrbench shortcut` output)")
    frames, model = shortcut_predictions(source, findings, features, splits)
    meta = {"kind": "shortcut", "source": str(Path(source).resolve()), "features": model.features,
            "provenance": provenance()}
    paths = {}
    for split, df in frames.items():
        paths[split] = predictions_path(out, split)
        write_predictions(df, paths[split], {**meta, "split": split})
    atomic_write_json(out / SHORTCUT_MODEL, {**model.to_dict(), "source": meta["source"],
                                             "splits": list(frames), "provenance": meta["provenance"]})
    return paths


def shortcut_check(model: pd.DataFrame | PredictionSet, shortcut: pd.DataFrame | PredictionSet, *,
                   name: str = "model", n_resamples: int = 1000, seed: int = 0, cluster: str = "image",
                   alpha: float = 0.05, ci_level: float = 0.95) -> pd.DataFrame:
    """Does the image model beat the shortcut? :func:`~cxrbench.evaluate.compare.compare_predictions`
    rows (model_a = ``name``, model_b = ``shortcut``, one-sided H1: model > shortcut, BH over the
    findings) plus ``beats_shortcut`` (adjusted p < ``alpha``; the mean row: raw p) and ``warning``."""
    from cxrbench.evaluate.compare import MEAN_ROW, compare_predictions

    if name == "shortcut":
        raise InputError("the image model cannot be called 'shortcut'", where="shortcut_check",
                         fix="pass another name")
    table = compare_predictions({name: model, "shortcut": shortcut}, reference="shortcut",
                                n_resamples=n_resamples, seed=seed, cluster=cluster, alternative="greater",
                                ci_level=ci_level)
    p = np.where(table["finding"] == MEAN_ROW, table["p_bootstrap"], table["p_adjusted"]).astype(np.float64)
    estimable = np.isfinite(table["auroc_a"].to_numpy(dtype=np.float64))
    table["beats_shortcut"] = estimable & (p < alpha)
    table["warning"] = [_warning(r, pv, alpha) if ok and not beats else ""
                        for r, pv, ok, beats in zip(table.to_dict(orient="records"), p, estimable,
                                                    table["beats_shortcut"], strict=True)]
    return table


def _warning(row: Mapping[str, Any], p: float, alpha: float) -> str:
    what = "the mean AUROC" if row["finding"] == "mean" else f"{row['finding']}"
    kind = "p" if row["finding"] == "mean" else "BH-adjusted p"
    return (f"{row['model_a']} does not beat the metadata-only shortcut on {what}: AUROC "
            f"{row['auroc_a']:.3f} vs {row['auroc_b']:.3f}, difference {row['diff']:+.3f} "
            f"[{row['diff_lo']:+.3f}, {row['diff_hi']:+.3f}], one-sided {kind} {p:.3g} (>= {alpha})")


def shortcut_warnings(table: pd.DataFrame) -> list[str]:
    """The warning lines of a :func:`shortcut_check` table (empty when the model beats it everywhere)."""
    return [w for w in table["warning"] if w]
