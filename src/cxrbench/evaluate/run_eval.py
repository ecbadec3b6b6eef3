"""Evaluating a run folder: predictions when needed, metrics, and atomic writes of both.

:func:`evaluate_run` predicts (through :func:`cxrbench.evaluate.inference.predict_split`) when
``RUN/eval/SPLIT/predictions.parquet`` is missing or older than the run's weights, scores it with
:func:`cxrbench.evaluate.scoring.evaluate_predictions` and writes ``metrics.json``; beside it
``subgroups.json`` (per-subgroup metrics, when the images' metadata is found) and
``calibration.json`` (when the scores are probabilities), see :mod:`cxrbench.evaluate.analysis`.
Every input is checked and every number computed before anything is written, so a failed
evaluation never damages an earlier one.
"""


from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256, read_json
from cxrbench.common.layout import CALIBRATION_FILE, RUN_CONFIG, STUDY_METRICS_FILE, SUBGROUPS_FILE
from cxrbench.common.provenance import provenance
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.analysis import (
    CALIBRATION_FORMAT,
    SUBGROUPS_FORMAT,
    CalibrationOptions,
    SubgroupOptions,
    calibration_analysis,
    load_subgroup_metadata,
    subgroup_analysis,
)
from cxrbench.evaluate.predictions import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    WEIGHTS_FILE,
    PredictionSet,
    eval_dir,
    predictions_meta,
    read_predictions,
    write_predictions,
)
from cxrbench.evaluate.scoring import METRICS_FORMAT, evaluate_predictions, threshold_source
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import calibration as cal

PredictFn = Callable[..., pd.DataFrame]


def get_predictions(run_dir: str | os.PathLike, split: str, *, repredict: bool = False,
                    predict_fn: PredictFn | None = None, predict_kwargs: Mapping[str, Any] | None = None
                    ) -> tuple[pd.DataFrame, dict | None]:
    """The split's predictions frame, and the metadata to write with it when freshly made (else None).

    Existing ``eval/SPLIT/predictions.parquet`` is reused unless ``repredict`` or the run's
    ``best.safetensors`` changed since it was written (its SHA-256 is stored in the file). Fresh
    predictions come from ``predict_fn`` (default :func:`cxrbench.evaluate.inference.predict_split`).
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
        from cxrbench.evaluate.inference import predict_split

        predict_fn = predict_split
    df = predict_fn(run_dir, split, **dict(predict_kwargs or {}))
    meta = {"weights_sha256": weights_sha, "split": split, "provenance": provenance()}
    return df, meta


def analysis_settings(*, n_resamples: int, seed: int, cluster: str, ci_level: float, source: str,
                      thresholds: float | Mapping[str, float] | None = None) -> dict[str, Any]:
    """The settings that decide a metrics.json's numbers (besides the predictions), comparable
    between two evaluations: seed and cluster only matter when there are resamples."""
    boot = int(n_resamples) > 0
    fixed = thresholds if isinstance(thresholds, Mapping) else ({"*": thresholds} if thresholds is not None
                                                                 else None)
    return {"bootstrap": int(n_resamples), "seed": int(seed) if boot else None,
            "cluster": cluster if boot else None, "ci": float(ci_level), "thresholds": source,
            "fixed": {k: float(v) for k, v in sorted(fixed.items())} if source == "fixed" and fixed else None}


def stored_settings(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`analysis_settings` of an existing metrics.json."""
    boot = metrics.get("bootstrap") or {}
    policy = metrics.get("threshold_policy") or {}
    source = policy.get("source")
    fixed = metrics.get("fixed_thresholds") if source == "fixed" else None
    return analysis_settings(n_resamples=int(boot.get("n_resamples") or 0), seed=int(boot.get("seed") or 0),
                             cluster=str(boot.get("cluster")), ci_level=float((metrics.get("ci") or {})
                                                                               .get("level", 0.95)),
                             source=str(source), thresholds=fixed)


_FLAGS = {"bootstrap": "--bootstrap", "seed": "--seed", "cluster": "--cluster", "ci": "--ci",
          "thresholds": "--threshold-from", "fixed": "--threshold"}


def settings_conflict(path: Path, new: dict[str, Any]) -> InputError | None:
    """The error to raise when ``path`` holds metrics computed with settings other than ``new``."""
    try:
        old = stored_settings(read_json(path))
    except (InputError, ValueError, TypeError, AttributeError):
        return None  # unreadable or not ours in shape: replaced like any stale output
    differ = [k for k in new if old.get(k) != new.get(k)]
    if not differ:
        return None
    change = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in differ)
    keep = " ".join(f"{_FLAGS[k]} {old[k]}" for k in differ if k in ("bootstrap", "seed", "cluster", "ci")
                    and old.get(k) is not None)
    return InputError(f"it holds metrics computed with other settings ({change})", where=str(path),
                      fix=(f"evaluate with the stored settings ({keep}), " if keep else "")
                      + "write the new ones elsewhere with --out-json, or pass --overwrite to replace it")


ON_CONFLICT = ("refuse", "overwrite", "keep")


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", *, n_resamples: int = 1000, seed: int = 0,
                 cluster: str = "patient", threshold_from: str | None = None,
                 thresholds: float | Mapping[str, float] | None = None, ci_level: float = 0.95,
                 repredict: bool = False, predict_fn: PredictFn | None = None,
                 predict_kwargs: Mapping[str, Any] | None = None,
                 memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                 subgroups: SubgroupOptions | bool | None = None,
                 calibration: CalibrationOptions | bool | None = None,
                 on_conflict: str = "refuse", study_level: str | None = None) -> dict:
    """Predict (when needed), evaluate and write ``RUN/eval/SPLIT/{predictions.parquet,metrics.json}``.

    ``subgroups`` / ``calibration``: None (default) computes ``subgroups.json`` when the metadata is
    found (``subgroups.metadata``, else ``predict_kwargs["cache_dir"]``, else the run's cache) and
    ``calibration.json`` when the scores are probabilities, and skips them otherwise; False skips
    them; True or options (``required=True`` by default) compute them or raise InputError. A
    sibling file this call does not rewrite is removed (it would describe other predictions). Every
    input is checked and every number computed before anything is written, and each file is
    replaced atomically, so a failed evaluation never damages an earlier one. An existing
    metrics.json computed with other settings (bootstrap count, seed, cluster, CI level, threshold
    policy) is, by ``on_conflict``: ``"refuse"`` (an error naming the settings), ``"overwrite"``
    (replaced) or ``"keep"`` (left as it is, with its sibling files; the metrics are only returned).
    ``study_level`` (``max`` or ``mean``): also ``study_metrics.json``, the same metrics of the image
    scores aggregated per study (:mod:`cxrbench.evaluate.studylevel`; study ids from the metadata
    source of the subgroups). Returns the metrics dict, with ``"written"``: whether metrics.json was
    written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", where=str(run_dir),
                         fix="give the folder made by `cxrbench train`")
    check_choice("--split", split, ("train", "val", "test"))
    check_choice("--cluster", cluster, bs.CLUSTERS)
    check_choice("on_conflict", on_conflict, ON_CONFLICT)
    if study_level is not None:
        from cxrbench.evaluate.studylevel import AGGREGATIONS

        check_choice("--study-level", study_level, AGGREGATIONS)
    source = threshold_source(threshold_from, thresholds)
    metrics_path = eval_dir(run_dir, split) / METRICS_FILE
    conflict = None
    if on_conflict != "overwrite" and metrics_path.is_file():
        conflict = settings_conflict(metrics_path, analysis_settings(
            n_resamples=n_resamples, seed=seed, cluster=cluster, ci_level=ci_level, source=source,
            thresholds=thresholds))
        if conflict is not None and on_conflict == "refuse":
            raise conflict
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
    extras: dict[str, dict] = {}
    sub_opts = _options(subgroups, SubgroupOptions)
    if sub_opts is not None:
        meta_source = sub_opts.metadata or (predict_kwargs or {}).get("cache_dir") or _run_cache(run_dir)
        if meta_source is None and sub_opts.required:
            raise InputError("no metadata for the subgroup analysis (the run's cache is unknown)",
                             where=str(run_dir), fix="give --metadata INDEX.parquet or --cache CACHE")
        if meta_source is not None:
            groups, _ = load_subgroup_metadata(test_ps, sub_opts, meta_source)
            thr = [float("nan") if e["threshold"] is None else float(e["threshold"])
                   for e in result["per_finding"].values()]
            extras[SUBGROUPS_FILE] = subgroup_analysis(test_ps, thr, groups, options=sub_opts,
                                                       n_resamples=n_resamples, seed=seed, ci_level=ci_level,
                                                       memory_bytes=memory_bytes, source=str(meta_source))
    cal_opts = _options(calibration, CalibrationOptions)
    if cal_opts is not None and (cal_opts.required or cal.is_probability(test_ps.scores)):
        recal_val = val_ps
        if cal_opts.recalibrate is not None and recal_val is None:
            val_df, val_meta = get_predictions(run_dir, "val", repredict=repredict, predict_fn=predict_fn,
                                               predict_kwargs=predict_kwargs)
            recal_val = PredictionSet.from_frame(val_df, where=f"val predictions of {run_dir}")
        extras[CALIBRATION_FILE] = calibration_analysis(
            test_ps, recal_val if cal_opts.recalibrate is not None else None, options=cal_opts,
            n_resamples=n_resamples, seed=seed, cluster=cluster, ci_level=ci_level,
            memory_bytes=memory_bytes, same_split=split == "val")
    if study_level is not None:
        extras[STUDY_METRICS_FILE] = _study_level(
            run_dir, study_level, test_ps, val_ps if source == "val" else None,
            (sub_opts.metadata if sub_opts is not None else None) or (predict_kwargs or {}).get("cache_dir"),
            n_resamples=n_resamples, seed=seed, cluster=cluster, threshold_from=threshold_from,
            thresholds=thresholds, ci_level=ci_level, memory_bytes=memory_bytes)
    out_dir = eval_dir(run_dir, split)
    if val_meta is not None:
        write_predictions(val_df, eval_dir(run_dir, "val") / PREDICTIONS_FILE, val_meta)
    if test_meta is not None:
        write_predictions(test_df, out_dir / PREDICTIONS_FILE, test_meta)
    result = {"run": str(run_dir), "split": split, **result,
              "predictions_sha256": file_sha256(out_dir / PREDICTIONS_FILE),
              "provenance": provenance()}
    if source == "fixed":
        result["fixed_thresholds"] = analysis_settings(n_resamples=0, seed=0, cluster=cluster,
                                                       ci_level=ci_level, source=source,
                                                       thresholds=thresholds)["fixed"]
    if conflict is None:  # metrics.json and its siblings describe the same evaluation
        for name, doc in extras.items():
            atomic_write_json(out_dir / name, {**doc, "predictions_sha256": result["predictions_sha256"]})
        _remove_stale(out_dir, keep=set(extras))
        atomic_write_json(metrics_path, result)  # json_safe: NaN -> null, inf -> "inf"
    return {**result, "written": conflict is None}


def _study_level(run_dir: Path, how: str, test_ps: PredictionSet, val_ps: PredictionSet | None,
                 metadata: Any, **scoring: Any) -> dict:
    """``study_metrics.json``: the metrics of the image scores aggregated per study."""
    from cxrbench.evaluate.studylevel import study_level_metrics

    source = metadata or _run_cache(run_dir)
    return study_level_metrics(test_ps, val_ps, source, how, where=f"predictions of {run_dir}", **scoring)


def _options(value, cls):
    """None -> defaults, skipped when not possible; False -> off; True -> defaults, required; options."""
    if value is False:
        return None
    if value is None or value is True:
        return cls(required=value is True)
    if not isinstance(value, cls):
        raise TypeError(f"expected {cls.__name__}, True, False or None, got {type(value).__name__}")
    return value


def _run_cache(run_dir: Path) -> Path | None:
    """The run's cache from its config.yaml when it still exists (None for foreign predictions)."""
    if not (run_dir / RUN_CONFIG).is_file():
        return None
    from cxrbench.train.runfolder import read_run_config

    cache = (read_run_config(run_dir).get("cache") or {}).get("path")
    return Path(cache) if cache and Path(cache).is_dir() else None


def _remove_stale(out_dir: Path, keep: set[str]) -> None:
    """Remove subgroups.json / calibration.json / study_metrics.json written by an earlier evaluation and
    not rewritten now."""
    formats = {SUBGROUPS_FILE: SUBGROUPS_FORMAT, CALIBRATION_FILE: CALIBRATION_FORMAT,
               STUDY_METRICS_FILE: METRICS_FORMAT}
    for name, fmt in formats.items():
        path = out_dir / name
        if name in keep or not path.is_file():
            continue
        try:
            doc = read_json(path)
        except InputError:
            continue
        if isinstance(doc, dict) and doc.get("format") == fmt:
            path.unlink()


def read_metrics(path: str | os.PathLike) -> dict:
    """Read a metrics.json written by :func:`evaluate_run` (format checked)."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise InputError(f"not a cxrbench metrics file (format {fmt!r})", where=str(path),
                         fix="re-run `cxrbench evaluate`")
    return data

