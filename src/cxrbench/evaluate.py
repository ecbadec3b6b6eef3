"""Evaluation of a run's predictions: per-finding metrics with bootstrap CIs, written to metrics.json.

Three steps, each usable alone:

1. predictions (Contract 4): ``RUN/eval/SPLIT/predictions.parquet`` with ``image_id``,
   ``patient_id`` and per finding ``p_<name>`` (score) and ``y_<name>`` (1/0/NaN). Made by
   ``cxrbench.inference.predict_split`` when missing or older than the run's weights
   (:func:`get_predictions`), or written by any other tool.
2. :func:`evaluate_predictions`: a pure function from prediction frames to the metrics dict.
3. :func:`evaluate_run`: both, plus atomic writes (a failed run leaves earlier files untouched).

Images are put in canonical order (sorted by ``image_id``) before resampling, so the bootstrap
resamples depend only on (seed, B, cluster, the set of images) and every model evaluated on the
same images gets the same resamples (see :mod:`cxrbench.bootstrap`).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench import bootstrap as bs
from cxrbench import metrics as mt
from cxrbench.errors import InputError
from cxrbench.fileio import atomic_path, atomic_write_json, file_sha256, read_json
from cxrbench.provenance import provenance
from cxrbench.stats import delong_auroc_ci
from cxrbench.validation import check_choice, check_columns

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
METRICS_FORMAT = "cxrbench.metrics/1"
WEIGHTS_FILE = "best.safetensors"
PREDICTIONS_META_KEY = b"cxrbench.predictions"
THRESHOLD_SOURCES: tuple[str, ...] = ("val", "test", "fixed")
CURVE_METRICS: tuple[str, ...] = ("auroc", "average_precision")

THRESHOLD_DESCRIPTIONS = {
    "val": "Youden's J threshold chosen on the validation predictions, applied unchanged to the "
           "evaluated split and to every bootstrap resample",
    "test": "REFERENCE-STUDY REPRODUCTION: Youden's J threshold chosen on the evaluated split itself "
            "and re-chosen on each bootstrap resample (optimistic; not a held-out estimate)",
    "fixed": "fixed threshold(s) given by the user, applied to the evaluated split and every resample",
}


def eval_dir(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT``."""
    return Path(run_dir) / "eval" / split


@dataclass(frozen=True)
class PredictionSet:
    """Validated predictions of one split, in canonical order (sorted by image id).

    ``labels`` and ``scores`` are float64 (n, K) in the order of ``findings``.
    """

    image_ids: np.ndarray
    patient_ids: np.ndarray
    findings: list[str]
    labels: np.ndarray
    scores: np.ndarray
    where: str = "predictions"

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.image_ids.size)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, where: str = "predictions") -> PredictionSet:
        """Validate a Contract-4 predictions frame (any row order) and sort it by image id."""
        if isinstance(df, PredictionSet):
            return df
        check_columns(df.columns, ["image_id", "patient_id"], where,
                      fix="predictions need image_id, patient_id and p_<finding>/y_<finding> columns")
        findings = prediction_findings(df.columns, where)
        if len(df) == 0:
            raise InputError("no images (the split is empty)", where=where,
                             fix="check the split name and that the index assigns images to it")
        for col in ("image_id", "patient_id"):
            if df[col].isna().any():
                row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
                raise InputError(f"column {col!r} is empty at row {row}", where=where,
                                 fix="every image needs an image_id and a patient_id "
                                     "(use the image id as patient id when patients are unknown)")
        ids = df["image_id"].astype(str).to_numpy(dtype=object)
        order = np.argsort(ids, kind="stable")
        ids = np.asarray(ids[order], dtype=str)
        dup = ids[1:] == ids[:-1]
        if dup.any():
            raise InputError(f"image_id {str(ids[1:][dup][0])!r} appears more than once "
                             f"({int(dup.sum())} duplicate(s))", where=where, fix="one row per image")
        pats = np.asarray(df["patient_id"].astype(str).to_numpy(dtype=object)[order], dtype=str)
        labels = np.empty((ids.size, len(findings)))
        scores = np.empty((ids.size, len(findings)))
        for j, f in enumerate(findings):
            y, s = _numeric(df, f"y_{f}", order, where), _numeric(df, f"p_{f}", order, where)
            labels[:, j], scores[:, j] = mt.check_labels_scores(y, s, where=f"{where}, finding {f!r}",
                                                                ids=ids)
        return cls(ids, pats, findings, labels, scores, where)

    def column(self, finding: str) -> int:
        """Index of ``finding`` in :attr:`findings`."""
        return self.findings.index(finding)

    def resamples(self, n_resamples: int, seed: int, cluster: str) -> bs.Resamples:
        """The bootstrap resamples of this set (same images + same arguments = same resamples)."""
        return bs.make_resamples(self.image_ids, self.patient_ids, n_resamples, seed, cluster)


def _numeric(df: pd.DataFrame, col: str, order: np.ndarray, where: str) -> np.ndarray:
    """Column ``col`` as float64 in ``order``; text that is not a number is refused, not turned into NaN."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)[order]
    raw = df[col].to_numpy(dtype=object)[order]
    coerced = np.isnan(values) & ~pd.isna(raw)
    if coerced.any():
        i = int(np.flatnonzero(coerced)[0])
        raise InputError(f"column {col!r} holds non-numeric value {raw[i]!r}", where=where,
                         fix="scores and labels must be numbers (labels 1, 0 or empty for unknown)")
    return values


def prediction_findings(columns, where: str = "predictions") -> list[str]:
    """Finding names from ``p_<name>``/``y_<name>`` column pairs (order of the ``p_`` columns)."""
    cols = [str(c) for c in columns]
    p_names = [c[2:] for c in cols if c.startswith("p_")]
    y_names = {c[2:] for c in cols if c.startswith("y_")}
    missing_y = [f for f in p_names if f not in y_names]
    missing_p = sorted(y_names - set(p_names))
    if missing_y or missing_p:
        parts = [f"p_{f} has no y_{f}" for f in missing_y] + [f"y_{f} has no p_{f}" for f in missing_p]
        raise InputError("; ".join(parts), where=where,
                         fix="every finding needs a score column p_<name> and a label column y_<name>")
    if not p_names:
        raise InputError("no finding columns (p_<name>/y_<name>)", where=where,
                         fix="write one p_<finding> and one y_<finding> column per finding")
    return p_names


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions Parquet file (validated when turned into a :class:`PredictionSet`)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("predictions file not found", where=str(path),
                         fix="run `cxrbench evaluate RUN --split SPLIT` first, "
                             "or write Contract-4 predictions there")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"not a readable Parquet file ({e})", where=str(path),
                         fix="re-create it with `cxrbench evaluate RUN --repredict`") from None


def predictions_meta(path: str | os.PathLike) -> dict:
    """The cxrbench metadata stored in a predictions file (``{}`` when written by another tool)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except OSError:
        return {}
    raw = meta.get(PREDICTIONS_META_KEY)
    return json.loads(raw) if raw else {}


def write_predictions(df: pd.DataFrame, path: str | os.PathLike,
                      meta: Mapping[str, Any] | None = None) -> None:
    """Write a predictions frame atomically (sorted by image id), with ``meta`` in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(out, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[PREDICTIONS_META_KEY] = json.dumps(dict(meta or {}), default=str).encode()
    table = table.replace_schema_metadata(schema_meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------------------------------------
# thresholds


def resolve_thresholds(findings: list[str], thresholds: float | Mapping[str, float] | None,
                       where: str = "--threshold") -> np.ndarray:
    """Per-finding fixed thresholds from one number or a ``{finding: t}`` mapping (key ``"*"`` = default)."""
    if thresholds is None:
        return np.full(len(findings), np.nan)
    if not isinstance(thresholds, Mapping):
        thresholds = {"*": float(thresholds)}
    unknown = [k for k in thresholds if k != "*" and k not in findings]
    if unknown:
        from cxrbench.validation import closest

        hint = closest(unknown[0], findings)
        raise InputError(f"threshold given for unknown finding {unknown[0]!r}", where=where,
                         fix=(f"did you mean {hint!r}? " if hint else "")
                         + f"findings: {', '.join(findings)}")
    default = thresholds.get("*")
    missing = [f for f in findings if f not in thresholds and default is None]
    if missing:
        raise InputError(f"no threshold for finding(s) {', '.join(missing)}", where=where,
                         fix="give a default (--threshold 0.5) besides the per-finding ones "
                             "(--threshold name=0.3)")
    values = np.array([float(thresholds.get(f, default)) for f in findings])
    if not np.all(np.isfinite(values)):
        raise InputError("thresholds must be finite numbers", where=where, fix="e.g. --threshold 0.5")
    return values


def _threshold_source(threshold_from: str | None, thresholds) -> str:
    if thresholds is not None:
        if threshold_from not in (None, "fixed"):
            raise InputError(f"--threshold-from {threshold_from} conflicts with fixed --threshold values",
                             where="thresholds", fix="give either --threshold-from or --threshold")
        return "fixed"
    source = "val" if threshold_from is None else threshold_from
    check_choice("--threshold-from", source, ("val", "test"))
    return source


def _val_thresholds(test: PredictionSet, val: PredictionSet | None) -> tuple[np.ndarray, dict[str, str]]:
    """Youden thresholds chosen on the validation set; reasons for findings without one."""
    if val is None:
        raise InputError("thresholds are chosen on the validation split, "
                         "but no validation predictions were given",
                         where="--threshold-from val",
                         fix="evaluate a run that has a val split, or use --threshold-from test "
                             "(reference-study reproduction) or --threshold X")
    out = np.full(len(test.findings), np.nan)
    reasons: dict[str, str] = {}
    for j, f in enumerate(test.findings):
        if f not in val.findings:
            reasons[f] = "finding absent from the validation predictions"
            continue
        k = val.column(f)
        why = mt.not_estimable_reason(val.labels[:, k])
        if why:
            reasons[f] = f"validation split has {why}"
            continue
        out[j] = mt.youden_threshold(val.labels[:, k], val.scores[:, k])[0]
    return out, reasons


# ---------------------------------------------------------------------------------------------
# the pure evaluation


def evaluate_predictions(test: pd.DataFrame | PredictionSet,
                         val: pd.DataFrame | PredictionSet | None = None, *,
                         n_resamples: int = 1000, seed: int = 0, cluster: str = "image",
                         threshold_from: str | None = None,
                         thresholds: float | Mapping[str, float] | None = None,
                         ci_level: float = 0.95, memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> dict:
    """Metrics of one split's predictions with bootstrap CIs, as the dict written to metrics.json.

    ``threshold_from``: ``"val"`` (default; Youden's J on ``val``), ``"test"`` (the reference study:
    Youden's J on the evaluated split, re-chosen on each resample), or fixed ``thresholds`` (one
    number or ``{finding: t}``). ``n_resamples=0`` gives point estimates only. Findings with one
    class are reported as not estimable (NaN plus an :class:`~cxrbench.metrics.UndefinedMetricWarning`).
    """
    check_choice("cluster", cluster, bs.CLUSTERS)
    if not 0.0 < ci_level < 1.0:
        raise InputError(f"CI level {ci_level} is not in (0, 1)", where="ci_level", fix="e.g. 0.95")
    if int(n_resamples) < 0:
        raise InputError(f"bootstrap count {n_resamples} is negative", where="--bootstrap",
                         fix="give 0 (no bootstrap) or a positive count, e.g. 1000")
    ps = PredictionSet.from_frame(test, where=getattr(test, "where", "test predictions"))
    source = _threshold_source(threshold_from, thresholds)
    reasons: dict[str, str] = {}
    if source == "fixed":
        thr = resolve_thresholds(ps.findings, thresholds)
    elif source == "val":
        vs = PredictionSet.from_frame(val, where="validation predictions") if val is not None else None
        thr, reasons = _val_thresholds(ps, vs)
    else:
        thr = np.array([mt.youden_threshold(ps.labels[:, j], ps.scores[:, j])[0]
                        if not mt.not_estimable_reason(ps.labels[:, j]) else np.nan
                        for j in range(len(ps.findings))])
    names = list(CURVE_METRICS) + list(mt.THRESHOLD_METRICS)
    warn_list: list[str] = []
    not_estimable: dict[str, str] = {}
    points = np.full((len(names), len(ps.findings)), np.nan)
    per_finding: dict[str, dict] = {}
    for j, f in enumerate(ps.findings):
        y, s = ps.labels[:, j], ps.scores[:, j]
        why = mt.not_estimable_reason(y)
        entry: dict[str, Any] = {**mt.class_counts(y)}
        entry["prevalence"] = entry["n_positive"] / entry["n"] if entry["n"] else float("nan")
        entry["estimable"] = why is None
        entry["not_estimable_reason"] = why
        entry["threshold"] = None if np.isnan(thr[j]) else float(thr[j])
        entry["threshold_source"] = source
        entry["threshold_note"] = reasons.get(f)
        if why:
            not_estimable[f] = why
            msg = f"{f}: not estimable ({why}); its metrics are NaN and it is left out of the macro average"
            warn_list.append(msg)
            warnings.warn(msg, mt.UndefinedMetricWarning, stacklevel=2)
        else:
            pm = mt.point_metrics(y, s, threshold=float(thr[j]))
            points[:, j] = [pm[name] for name in names]
            _, lo, hi = delong_auroc_ci(y, s, ci_level)
            entry["auroc_delong_ci"] = [lo, hi]
        per_finding[f] = entry
    boot = None
    resamples = None
    if n_resamples > 0:
        resamples = ps.resamples(int(n_resamples), int(seed), cluster)
        raw = bs.bootstrap_metrics(ps.labels, ps.scores, resamples, memory_bytes=memory_bytes,
                                   thresholds=None if source == "test" else thr, youden=source == "test")
        boot = {"auroc": raw["auroc"], "average_precision": raw["average_precision"]}
        tm = mt.threshold_metrics(raw["tp"], raw["fp"], raw["tn"], raw["fn"])
        boot.update(tm)
        if source == "test":
            boot_thr = raw["threshold"]
    estimable = [j for j, f in enumerate(ps.findings) if f not in not_estimable]
    for j, f in enumerate(ps.findings):
        entry = per_finding[f]
        entry["metrics"] = {}
        for i, name in enumerate(names):
            values = boot[name][:, j] if boot is not None else np.zeros(0)
            entry["metrics"][name] = bs.summarize(values, points[i, j], ci_level)
        if boot is not None and f not in not_estimable:
            excluded = int(np.isnan(boot["auroc"][:, j]).sum())
            entry["resamples_one_class"] = excluded
            if excluded:
                msg = (f"{f}: {excluded} of {n_resamples} resamples had only one class; "
                       "they are excluded for this finding")
                warn_list.append(msg)
                warnings.warn(msg, mt.UndefinedMetricWarning, stacklevel=2)
            if source == "test":
                finite = np.where(np.isfinite(boot_thr[:, j]), boot_thr[:, j], np.nan)
                entry["threshold_bootstrap"] = bs.summarize(finite, thr[j], ci_level)
    # Macro average per metric over the findings where it is defined on the full split; a resample
    # where one of them is undefined is excluded (and counted) rather than averaged over fewer findings.
    macro: dict[str, Any] = {"findings": [ps.findings[j] for j in estimable], "metrics": {}}
    for i, name in enumerate(names):
        cols = [j for j in estimable if np.isfinite(points[i, j])]
        point = float(np.mean(points[i, cols])) if cols else float("nan")
        values = boot[name][:, cols].mean(axis=1) if boot is not None and cols else np.zeros(0)
        macro["metrics"][name] = {**bs.summarize(values, point, ci_level), "n_findings": len(cols)}
    return {
        "format": METRICS_FORMAT,
        "n_images": ps.n,
        "n_patients": int(np.unique(ps.patient_ids).size),
        "image_order_hash": bs.ids_hash(ps.image_ids),
        "findings": list(ps.findings),
        "threshold_policy": {"source": source, "rule": "youden" if source != "fixed" else "fixed",
                             "description": THRESHOLD_DESCRIPTIONS[source]},
        "ci": {"level": ci_level, "method": "bootstrap percentile (linear interpolation)",
               "spread": "mean and std (ddof=1) over the usable resamples"},
        "bootstrap": resamples.describe() if resamples is not None else None,
        "per_finding": per_finding,
        "macro": macro,
        "not_estimable": not_estimable,
        "warnings": warn_list,
    }


# ---------------------------------------------------------------------------------------------
# run folders


PredictFn = Callable[..., pd.DataFrame]


def get_predictions(run_dir: str | os.PathLike, split: str, *, repredict: bool = False,
                    predict_fn: PredictFn | None = None, predict_kwargs: Mapping[str, Any] | None = None
                    ) -> tuple[pd.DataFrame, dict | None]:
    """The split's predictions frame, and the metadata to write with it when freshly made (else None).

    Existing ``eval/SPLIT/predictions.parquet`` is reused unless ``repredict`` or the run's
    ``best.safetensors`` changed since it was written (its SHA-256 is stored in the file). Fresh
    predictions come from ``predict_fn`` (default ``cxrbench.inference.predict_split``).
    """
    run_dir = Path(run_dir)
    path = eval_dir(run_dir, split) / PREDICTIONS_FILE
    weights = run_dir / WEIGHTS_FILE
    weights_sha = file_sha256(weights) if weights.is_file() else None
    if path.is_file() and not repredict:
        stored = predictions_meta(path).get("weights_sha256")
        if weights_sha is None or stored == weights_sha:
            return read_predictions(path), None
    if weights_sha is None:
        raise InputError(f"no predictions for split {split!r} and no trained weights ({WEIGHTS_FILE})",
                         where=str(run_dir),
                         fix=f"train the run first, or write Contract-4 predictions to {path}")
    if predict_fn is None:
        try:
            from cxrbench.inference import predict_split as predict_fn
        except ImportError as e:
            raise InputError(f"cannot make predictions: cxrbench.inference is not available ({e})",
                             where=str(run_dir), fix=f"write Contract-4 predictions to {path}") from None
    df = predict_fn(run_dir, split, **dict(predict_kwargs or {}))
    meta = {"weights_sha256": weights_sha, "split": split, "provenance": provenance()}
    return df, meta


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", *, n_resamples: int = 1000, seed: int = 0,
                 cluster: str = "image", threshold_from: str | None = None,
                 thresholds: float | Mapping[str, float] | None = None, ci_level: float = 0.95,
                 repredict: bool = False, predict_fn: PredictFn | None = None,
                 predict_kwargs: Mapping[str, Any] | None = None,
                 memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> dict:
    """Predict (when needed), evaluate and write ``RUN/eval/SPLIT/{predictions.parquet,metrics.json}``.

    Every input is checked and every number computed before anything is written, and each file is
    replaced atomically, so a failed evaluation never damages an earlier one. Returns the metrics dict.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", where=str(run_dir),
                         fix="give the folder made by `cxrbench train`")
    check_choice("--split", split, ("train", "val", "test"))
    source = _threshold_source(threshold_from, thresholds)
    test_df, test_meta = get_predictions(run_dir, split, repredict=repredict, predict_fn=predict_fn,
                                         predict_kwargs=predict_kwargs)
    test_ps = PredictionSet.from_frame(test_df, where=f"{split} predictions of {run_dir}")
    val_df, val_meta, val_ps = None, None, None
    if source == "val":
        if split == "val":
            val_ps = test_ps
        else:
            val_df, val_meta = get_predictions(run_dir, "val", repredict=repredict, predict_fn=predict_fn,
                                               predict_kwargs=predict_kwargs)
            val_ps = PredictionSet.from_frame(val_df, where=f"val predictions of {run_dir}")
    result = evaluate_predictions(test_ps, val_ps, n_resamples=n_resamples, seed=seed, cluster=cluster,
                                  threshold_from=threshold_from, thresholds=thresholds, ci_level=ci_level,
                                  memory_bytes=memory_bytes)
    if source == "val" and split == "val":
        result["threshold_policy"]["description"] += " (here the evaluated split is the validation split)"
    out_dir = eval_dir(run_dir, split)
    if val_meta is not None:
        write_predictions(val_df, eval_dir(run_dir, "val") / PREDICTIONS_FILE, val_meta)
    if test_meta is not None:
        write_predictions(test_df, out_dir / PREDICTIONS_FILE, test_meta)
    result = {"run": str(run_dir), "split": split, **result,
              "predictions_sha256": file_sha256(out_dir / PREDICTIONS_FILE),
              "provenance": provenance()}
    atomic_write_json(out_dir / METRICS_FILE, json_safe(result))
    return result


def read_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by :func:`evaluate_run` (format checked)."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise InputError(f"not a cxrbench metrics file (format {fmt!r})", where=str(path),
                         fix="re-run `cxrbench evaluate`")
    return data


def json_safe(obj: Any) -> Any:
    """Floats as JSON allows: NaN -> null, +/-inf -> the strings "inf"/"-inf" (recursively)."""
    if isinstance(obj, float | np.floating):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


_json_safe = json_safe  # older name, used by cxrbench.study.stages
