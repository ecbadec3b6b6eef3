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

from cxrbench.common.errors import InputError, on_command_line, spell
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
from cxrbench.evaluate.metrics_table import Metrics
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


# a setting of analysis_settings -> (its command-line flag, its keyword argument)
_FLAGS = {"bootstrap": ("--bootstrap", "n_resamples"), "seed": ("--seed", "seed"),
          "cluster": ("--cluster", "cluster"), "ci": ("--ci", "ci_level"),
          "thresholds": ("--threshold-from", "threshold_from"), "fixed": ("--threshold", "thresholds")}


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
    keep = (", " if not on_command_line() else " ").join(
        spell(f"{_FLAGS[k][0]} {old[k]}", f"{_FLAGS[k][1]}={old[k]!r}") for k in differ
        if k in ("bootstrap", "seed", "cluster", "ci") and old.get(k) is not None)
    rest = spell("write the new ones elsewhere with --out-json, or pass --overwrite to replace it",
                 'pass on_conflict="overwrite" to replace it, or on_conflict="keep" to leave it as it is and '
                 "only get the metrics")
    return InputError(f"it holds metrics computed with other settings ({change})", where=str(path),
                      fix=(f"evaluate with the stored settings ({keep}), " if keep else "") + rest)


ON_CONFLICT = ("refuse", "overwrite", "keep")


def evaluate_run(run_dir: str | os.PathLike, split: str = "test", *, n_resamples: int = 1000, seed: int = 0,
                 cluster: str = "patient", threshold_from: str | None = None,
                 thresholds: float | Mapping[str, float] | None = None, ci_level: float = 0.95,
                 repredict: bool = False, predict_fn: PredictFn | None = None,
                 predict_kwargs: Mapping[str, Any] | None = None,
                 memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                 subgroups: SubgroupOptions | bool | None = None,
                 calibration: CalibrationOptions | bool | None = None,
                 on_conflict: str = "refuse", study_level: str | None = None) -> Metrics:
    """Predict (when needed), evaluate and write ``RUN/eval/SPLIT/{predictions.parquet,metrics.json}``.

    Args:
        run_dir: a run folder of ``cxrbench.train`` (or one holding ``eval/SPLIT/predictions.parquet``).
        split: ``"test"`` (default), ``"val"`` or ``"train"``.
        n_resamples, seed, cluster, threshold_from, thresholds, ci_level, memory_bytes: as
            :func:`~cxrbench.evaluate.scoring.evaluate_predictions` (bootstrap count, its seed,
            ``"patient"``/``"image"`` resampling, Youden threshold on ``"val"``/``"test"`` or fixed
            probabilities, CI level in (0, 1), bytes).
        repredict: score the split again even when predictions newer than the weights exist.
        predict_fn, predict_kwargs: another scorer (tests) / options of
            :func:`~cxrbench.evaluate.inference.predict_split` (``cache_dir``, ``batch_size``, ``device``).
        subgroups, calibration: None (default) computes ``subgroups.json`` when the metadata is found
            (``subgroups.metadata``, else ``predict_kwargs["cache_dir"]``, else the run's cache) and
            ``calibration.json`` when the scores are probabilities, and skips them otherwise; False
            skips them; True or options (``required=True`` by default) compute them or raise. A
            sibling file this call does not rewrite is removed (it would describe other predictions).
        on_conflict: what happens to an existing metrics.json computed with other settings
            (bootstrap count, seed, cluster, CI level, threshold policy): ``"refuse"`` (default: an
            error naming the settings), ``"overwrite"`` (replaced) or ``"keep"`` (left as it is, with
            its sibling files; the metrics are only returned).
        study_level: ``"max"`` or ``"mean"``: also ``study_metrics.json``, the same metrics of the image
            scores aggregated per study (:mod:`cxrbench.evaluate.studylevel`; study ids from the metadata
            source of the subgroups).

    Every input is checked and every number computed before anything is written, and each file is
    replaced atomically, so a failed evaluation never damages an earlier one.

    Returns:
        :class:`~cxrbench.evaluate.metrics_table.Metrics`: the metrics.json dict plus ``"written"``
        (whether metrics.json was written); ``.table()`` gives one row per finding and metric.

    Example::

        m = cxrbench.evaluate_run("runs/nih", "test", n_resamples=1000)
        print(m["macro"]["metrics"]["auroc"])          # value, ci_low, ci_high, ...
        m.table().query("metric == 'auroc'")[["finding", "value", "ci_low", "ci_high"]]
        preds = cxrbench.load_predictions("runs/nih", "test")
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("run folder not found", where=str(run_dir),
                         fix=spell("give the folder made by `cxrbench train`",
                                   "give the run folder of cxrbench.train(cfg), cfg.out"))
    _check_choices(split, cluster, on_conflict, study_level)
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
    val: tuple[pd.DataFrame | None, dict | None] = (None, None)
    val_ps = None
    if source == "val":
        if split == "val":
            val_ps = test_ps
        else:
            val = get_predictions(run_dir, "val", repredict=repredict, predict_fn=predict_fn,
                                  predict_kwargs=predict_kwargs)
            val_ps = PredictionSet.from_frame(val[0], where=f"val predictions of {run_dir}")
    result = evaluate_predictions(test_ps, val_ps, n_resamples=n_resamples, seed=seed, cluster=cluster,
                                  threshold_from=threshold_from, thresholds=thresholds, ci_level=ci_level,
                                  memory_bytes=memory_bytes)
    if source == "val" and split == "val":
        result["threshold_policy"]["description"] += " (here the evaluated split is the validation split)"
    boot = {"n_resamples": n_resamples, "seed": seed, "ci_level": ci_level, "memory_bytes": memory_bytes}
    extras: dict[str, dict] = {}
    sub_doc = _subgroups(run_dir, test_ps, result, subgroups, predict_kwargs, boot)
    if sub_doc is not None:
        extras[SUBGROUPS_FILE] = sub_doc
    cal_opts = _options(calibration, CalibrationOptions)
    if cal_opts is not None and (cal_opts.required or cal.is_probability(test_ps.scores)):
        recal_val = val_ps
        if cal_opts.recalibrate is not None and recal_val is None:
            val = get_predictions(run_dir, "val", repredict=repredict, predict_fn=predict_fn,
                                  predict_kwargs=predict_kwargs)
            recal_val = PredictionSet.from_frame(val[0], where=f"val predictions of {run_dir}")
        extras[CALIBRATION_FILE] = calibration_analysis(
            test_ps, recal_val if cal_opts.recalibrate is not None else None, options=cal_opts,
            n_resamples=n_resamples, seed=seed, cluster=cluster, ci_level=ci_level,
            memory_bytes=memory_bytes, same_split=split == "val")
    if study_level is not None:
        extras[STUDY_METRICS_FILE] = _study_level(
            run_dir, study_level, test_ps, val_ps if source == "val" else None,
            _options(subgroups, SubgroupOptions), predict_kwargs,
            n_resamples=n_resamples, seed=seed, cluster=cluster, threshold_from=threshold_from,
            thresholds=thresholds, ci_level=ci_level, memory_bytes=memory_bytes)
    out_dir = eval_dir(run_dir, split)
    if val[1] is not None:
        write_predictions(val[0], eval_dir(run_dir, "val") / PREDICTIONS_FILE, val[1])
    if test_meta is not None:
        write_predictions(test_df, out_dir / PREDICTIONS_FILE, test_meta)
    result = Metrics({"run": str(run_dir), "split": split, **result,
                      "predictions_sha256": file_sha256(out_dir / PREDICTIONS_FILE),
                      "provenance": provenance()})
    if source == "fixed":
        result["fixed_thresholds"] = analysis_settings(n_resamples=0, seed=0, cluster=cluster,
                                                       ci_level=ci_level, source=source,
                                                       thresholds=thresholds)["fixed"]
    if conflict is None:  # metrics.json and its siblings describe the same evaluation
        for name, doc in extras.items():
            atomic_write_json(out_dir / name, {**doc, "predictions_sha256": result["predictions_sha256"]})
        _remove_stale(out_dir, keep=set(extras))
        atomic_write_json(metrics_path, result)  # json_safe: NaN -> null, inf -> "inf"
    return Metrics({**result, "written": conflict is None})


def _check_choices(split: str, cluster: str, on_conflict: str, study_level: str | None) -> None:
    """One InputError naming the option for a split, cluster, conflict policy or aggregation not known."""
    check_choice("--split", split, ("train", "val", "test"))
    check_choice("--cluster", cluster, bs.CLUSTERS)
    check_choice("on_conflict", on_conflict, ON_CONFLICT)
    if study_level is not None:
        from cxrbench.evaluate.studylevel import AGGREGATIONS

        check_choice("--study-level", study_level, AGGREGATIONS)


def _subgroups(run_dir: Path, test_ps: PredictionSet, result: Mapping[str, Any],
               subgroups: SubgroupOptions | bool | None, predict_kwargs: Mapping[str, Any] | None,
               boot: dict[str, Any]) -> dict | None:
    """The ``subgroups.json`` document of an evaluation, or None when it is skipped."""
    sub_opts = _options(subgroups, SubgroupOptions)
    if sub_opts is None:
        return None
    meta_source = sub_opts.metadata or (predict_kwargs or {}).get("cache_dir") or _run_cache(run_dir)
    if meta_source is None:
        if sub_opts.required:
            raise InputError("no metadata for the subgroup analysis (the run's cache is unknown)",
                             where=str(run_dir), fix="give " + spell(
                                 "--metadata INDEX.parquet or --cache CACHE",
                                 'subgroups=SubgroupOptions(metadata="INDEX.parquet") or '
                                 'predict_kwargs={"cache_dir": "CACHE"}'))
        return None
    groups, _ = load_subgroup_metadata(test_ps, sub_opts, meta_source)
    thr = [float("nan") if e["threshold"] is None else float(e["threshold"])
           for e in result["per_finding"].values()]
    return subgroup_analysis(test_ps, thr, groups, options=sub_opts, source=str(meta_source), **boot)


def _study_level(run_dir: Path, how: str, test_ps: PredictionSet, val_ps: PredictionSet | None,
                 sub_opts: SubgroupOptions | None, predict_kwargs: Mapping[str, Any] | None,
                 **scoring: Any) -> dict:
    """``study_metrics.json``: the metrics of the image scores aggregated per study (study ids from the
    subgroups' metadata, else the cache predicted from, else the run's cache)."""
    from cxrbench.evaluate.studylevel import study_level_metrics

    chosen = sub_opts.metadata if sub_opts is not None else None
    source = chosen or (predict_kwargs or {}).get("cache_dir") or _run_cache(run_dir)
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


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Read a metrics.json written by :func:`evaluate_run` (format checked); ``.table()`` as there."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else None
        raise InputError(f"not a cxrbench metrics file (format {fmt!r})", where=str(path),
                         fix="re-run `cxrbench evaluate`")
    return Metrics(data)

