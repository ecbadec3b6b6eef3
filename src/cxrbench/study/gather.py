"""Collect a study's finished results from its folder into a :class:`~cxrbench.report.results.StudyResults`.

Reads only files the stages wrote: ``metrics.json`` and ``predictions.parquet`` of every
evaluation, ``comparison.json`` of every comparison, ``log.jsonl`` of every run, the indexes, and
the weight files (hashed once, remembered by path, size and modification time). Results that are
not there yet are listed as missing; the report shows what exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256, read_json_or_none
from cxrbench.common.layout import METRICS_FILE, PREDICTIONS_FILE, RUN_BEST_WEIGHTS, RUN_LOG, predictions_path
from cxrbench.common.provenance import git_commit, now_iso, package_versions
from cxrbench.common.validation import as_float
from cxrbench.report.results import MEAN, StudyResults, adjust_main_family, default_mask
from cxrbench.study.axes import CONDITION_AXES, study_axes
from cxrbench.study.gather_analysis import gather_analyses
from cxrbench.study.gather_compare import (
    CONDITION_COLUMNS,
    adaptation_tests,
    apply_comparisons,
    pooled_rows,
    recipe_tests,
    tuning_tests,
)
from cxrbench.study.gather_tuning import tuning_frames, with_tuned_values
from cxrbench.study.protocol import read_protocol
from cxrbench.study.steps import Plan

_ROC_POINTS = 200

_THRESHOLD_METRICS = ("sensitivity", "specificity", "accuracy", "f1")


def _metric_rows(metrics: dict, keys: dict[str, Any]) -> list[dict[str, Any]]:
    """results rows (findings + mean) from a metrics.json dict."""
    rows = []
    for f, entry in (metrics.get("per_finding") or {}).items():
        m = entry.get("metrics") or {}
        a = m.get("auroc") or {}
        row = {
            **keys,
            "finding": f,
            "auroc": as_float(a.get("value")),
            "auroc_lo": as_float(a.get("ci_low")),
            "auroc_hi": as_float(a.get("ci_high")),
            "auroc_std": as_float(a.get("std")),
            "n": entry.get("n"),
            "n_positive": entry.get("n_positive"),
            "threshold": as_float(entry.get("threshold")),
        }
        for t in _THRESHOLD_METRICS:
            row[t] = as_float((m.get(t) or {}).get("value"))
        rows.append(row)
    macro = (metrics.get("macro") or {}).get("metrics") or {}
    a = macro.get("auroc") or {}
    mean = {
        **keys,
        "finding": MEAN,
        "auroc": as_float(a.get("value")),
        "auroc_lo": as_float(a.get("ci_low")),
        "auroc_hi": as_float(a.get("ci_high")),
        "auroc_std": as_float(a.get("std")),
        "n": metrics.get("n_images"),
        "n_findings": a.get("n_findings", len((metrics.get("macro") or {}).get("findings") or [])),
    }
    for t in _THRESHOLD_METRICS:
        mean[t] = as_float((macro.get(t) or {}).get("value"))
    rows.append(mean)
    return rows


def _roc(pred: pd.DataFrame, finding: str) -> tuple[np.ndarray, np.ndarray] | None:
    """ROC points of one finding, at most ~200 (step-preserving subsample of large curves)."""
    import warnings

    from cxrbench.stats.metrics import not_estimable_reason, roc_curve

    y = pred[f"y_{finding}"].to_numpy(dtype=np.float64)
    s = pred[f"p_{finding}"].to_numpy(dtype=np.float64)
    if not_estimable_reason(y):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fpr, tpr, _ = roc_curve(y, s)
    if fpr.size > _ROC_POINTS:
        grid = np.linspace(0.0, 1.0, _ROC_POINTS)
        idx = np.searchsorted(fpr, grid, side="right") - 1
        fpr, tpr = np.r_[grid, 1.0], np.r_[tpr[np.clip(idx, 0, tpr.size - 1)], 1.0]
    return fpr.astype(np.float32), tpr.astype(np.float32)


def _curves(run_dir: Path, keys: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epoch: validation mean AUROC and the mean of the logged training losses."""
    path = run_dir / RUN_LOG
    if not path.is_file():
        return []
    losses: dict[int, list[float]] = {}
    epochs: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("kind") == "step" and rec.get("loss") is not None:
            losses.setdefault(int(rec["epoch"]), []).append(float(rec["loss"]))
        elif rec.get("kind") == "epoch":
            epochs[int(rec["epoch"])] = as_float(rec.get("val_mean_auroc"))
    return [
        {
            **keys,
            "epoch": e,
            "val_mean_auroc": epochs.get(e, float("nan")),
            "train_loss": float(np.mean(losses[e])) if e in losses else float("nan"),
        }
        for e in sorted(set(epochs) | set(losses))
    ]


def _dataset_summary(plan: Plan, dataset: str, findings: list[str]) -> tuple[list[dict], list[dict]]:
    from cxrbench.index.schema import read_index

    path = plan.study.layout.index_file(dataset)
    if not path.is_file():
        return [], []
    df, have = read_index(path)
    summ, prev = [], []
    for split in ("train", "val", "test"):
        part = df[df["split"] == split]
        if part.empty:
            continue
        summ.append(
            {
                "dataset": dataset,
                "split": split,
                "images": len(part),
                "patients": int(part["patient_id"].nunique()),
            }
        )
        for f in findings:
            if f not in have:
                continue
            y = part[f].to_numpy(dtype=np.float64, na_value=np.nan)
            n, pos = int((~np.isnan(y)).sum()), int((y == 1).sum())
            prev.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "finding": f,
                    "n": n,
                    "n_positive": pos,
                    "prevalence": pos / n if n else float("nan"),
                }
            )
    return summ, prev


class _HashCache:
    """SHA-256 of weight files, remembered by (path, size, mtime) in ``OUT/.cache/hashes.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_json_or_none(path) or {}
        self.dirty = False

    def sha(self, file: Path) -> str | None:
        try:
            st = file.stat()
        except OSError:
            return None
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in self.data:
            self.data[key] = file_sha256(file)
            self.dirty = True
        return self.data[key]

    def save(self) -> None:
        if self.dirty:
            atomic_write_json(self.path, self.data)


def weight_files(init: str) -> tuple[Path | None, str]:
    """The weight file an init loads (None for random inits or weights not on disk) and a note."""
    from cxrbench.models.resolve import parse_init, resolve_init
    from cxrbench.models.store import locate

    try:
        if parse_init(init).kind == "random":
            return None, "random initialization (no weights)"
        r = resolve_init(init)
    except Exception as e:  # an init the registry cannot resolve here: say so in the report
        return None, f"not resolvable here ({e.__class__.__name__})"
    if not r.pretrained:
        return None, "random initialization (no weights)"
    if r.checkpoint is not None:
        return Path(r.checkpoint), "checkpoint"
    if r.source is not None:
        loc = locate(r.source)
        return (loc.path, loc.origin) if loc is not None else (None, "weights not on this machine")
    return None, r.kind


def gather_results(plan: Plan) -> StudyResults:
    """Everything the report shows, from the study folder (missing results are listed, not fatal)."""
    study = plan.study
    cfg = study.config
    missing: list[str] = []
    table, roc, curves = _evaluations(plan, missing)
    pairs = apply_comparisons(plan, table, missing)
    table = _with_seed_variance(plan, _with_pooled(plan, pairs, missing))
    trials, chosen = tuning_frames(plan, missing)
    table = with_tuned_values(table, chosen)
    table = adjust_main_family(table) if cfg.comparisons.fdr == "bh" else table
    external = _external_rows(plan, missing)
    summaries, prevalence = [], []
    for d in cfg.datasets:
        findings = (
            list(dict.fromkeys(table.loc[(table["dataset"] == d) & (table["finding"] != MEAN), "finding"]))
            if len(table)
            else []
        )
        sm, pv = _dataset_summary(plan, d, findings)
        summaries += sm
        prevalence += pv
    firsts = pd.DataFrame()
    if len(table):  # the first seed's mean AUROC in the default condition: the gallery's init
        mask = (table["finding"] == MEAN) & (table["seed"].astype(str) == str(cfg.seeds[0]))
        for a in CONDITION_AXES:
            mask &= default_mask(table[a.column], a.column)
        firsts = table[mask]
    analyses = gather_analyses(plan, firsts[["dataset", "init", "auroc"]] if len(firsts) else None)
    analyses.baseline = _shortcut_rows(plan)
    used_recipes = [r for r in cfg.preprocess if len(table) and r in set(table["recipe"])]
    multi_adaptation = len(table) and table["adaptation"].nunique() > 1
    return StudyResults(
        name=cfg.name,
        title=cfg.title,
        description=cfg.description,
        inits=list(cfg.inits),
        init_names={k: v.init for k, v in cfg.inits.items()},
        reference=cfg.comparisons.reference,
        datasets=list(cfg.datasets),
        recipes=used_recipes or list(cfg.preprocess),
        seeds=list(cfg.seeds),
        ci_level=cfg.evaluation.ci,
        alpha=cfg.comparisons.alpha,
        table=table,
        pairs=pairs["pairs"],
        recipe_tests=recipe_tests(plan) if len(used_recipes) > 1 else pd.DataFrame(),
        adaptation_tests=adaptation_tests(plan) if multi_adaptation else pd.DataFrame(),
        tuning=trials, tuned=chosen, tuning_tests=tuning_tests(plan) if len(chosen) else pd.DataFrame(),
        analyses=analyses,
        axes=study_axes(cfg),
        roc=roc,
        curves=pd.DataFrame(curves),
        external=pd.DataFrame(external),
        summaries=pd.DataFrame(summaries),
        prevalence=pd.DataFrame(prevalence),
        provenance=_provenance(plan),
        protocol=read_protocol(plan),
        missing=missing,
        notes=list(plan.notes and [n for n in plan.notes if "not trained on its own source" in n]),
    )


def _evaluations(plan: Plan, missing: list[str]) -> tuple[pd.DataFrame, dict, list[dict[str, Any]]]:
    """``(results rows of every evaluation, ROC curves, training curves)``; the figures show the
    default condition (all labels, no noise)."""
    rows: list[dict[str, Any]] = []
    roc: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    curves: list[dict[str, Any]] = []
    for s in plan.of_kind("eval"):
        p = s.params
        keys = {"dataset": p.dataset, "recipe": p.recipe, "seed": p.seed, "init": p.label,
                **p.condition.as_dict}
        if s.status != "done":
            missing.append(s.id)
            continue
        metrics = read_json_or_none(s.out / METRICS_FILE)
        if metrics is None:
            missing.append(s.id)
            continue
        rows += _metric_rows(metrics, keys)
        if not p.condition.is_default:
            continue
        pred = pd.read_parquet(s.out / PREDICTIONS_FILE)
        for f in metrics.get("findings") or []:
            if f"y_{f}" in pred.columns:
                curve = _roc(pred, f)
                if curve is not None:
                    roc[(p.dataset, p.recipe, p.seed, p.label, f)] = curve
        curves += _curves(Path(p.run), {k: keys[k] for k in ("dataset", "recipe", "seed", "init")})
    columns = None if rows else ["dataset", "recipe", "seed", "init", "finding", "auroc", "auroc_lo",
                                 "auroc_hi", *CONDITION_COLUMNS]
    return pd.DataFrame(rows, columns=columns), roc, curves


def _with_seed_variance(plan: Plan, table: pd.DataFrame) -> pd.DataFrame:
    """``seed_sd_covers`` (which variance the seed SD of the row's arm covers) and ``deterministic``
    (an arm that ran once: the same run for every seed) on every row."""
    from cxrbench.study.seeds import deterministic, seed_variance

    if table.empty:
        return table
    cfg = plan.study.config
    t = table.copy()
    adaptation = t["adaptation"] if "adaptation" in t.columns else pd.Series("full", index=t.index)
    pairs = list(zip(t["init"], adaptation.fillna("full"), strict=True))
    covers: dict[tuple[str, str], tuple[str, bool]] = {}
    for label, method in set(pairs):
        spec = cfg.inits.get(label)
        once = spec is not None and deterministic(spec, method) and len(cfg.seeds) > 1
        covers[(label, method)] = ("", False) if spec is None else (seed_variance(spec, method), once)
    t["seed_sd_covers"] = [covers[p][0] for p in pairs]
    t["deterministic"] = [covers[p][1] for p in pairs]
    return t


def _shortcut_rows(plan: Plan) -> pd.DataFrame:
    """The metadata-only shortcut's own results rows per dataset and recipe (the study's bootstrap and
    thresholds from its validation predictions), for results.csv beside the image models'."""
    import warnings

    from cxrbench.evaluate.predictions import read_predictions
    from cxrbench.evaluate.scoring import evaluate_predictions

    ev = plan.study.config.evaluation
    rows: list[dict[str, Any]] = []
    for s in plan.of_kind("shortcut"):
        test = predictions_path(s.out, ev.split)
        if s.status != "done" or not test.is_file():
            continue
        val = predictions_path(s.out, "val")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = evaluate_predictions(read_predictions(test),
                                         read_predictions(val) if val.is_file() else None,
                                         n_resamples=ev.bootstrap, seed=ev.seed, cluster=ev.cluster,
                                         threshold_from="val" if val.is_file() else "test", ci_level=ev.ci)
        except InputError:
            continue
        rows += _metric_rows(m, {"dataset": s.params.dataset, "recipe": s.params.recipe})
    return pd.DataFrame(rows)


def _with_pooled(plan: Plan, pairs: dict[str, pd.DataFrame], missing: list[str]) -> pd.DataFrame:
    """The results table with the rows pooled over seeds appended (their pairs added to ``pairs``)."""
    table = pairs.pop("table")
    pooled, pooled_pairs = pooled_rows(plan, missing)
    if len(pooled) and len(table):  # a pooled row's n: the test images of its runs
        cols = ["dataset", "recipe", "init", *CONDITION_COLUMNS]
        first = table[table["finding"] == MEAN].drop_duplicates(cols)
        n_of = {tuple(r[c] for c in cols): r["n"] for r in first.to_dict(orient="records")}
        is_mean = pooled["finding"] == MEAN
        pooled.loc[is_mean, "n"] = [n_of.get(tuple(r[c] for c in cols))
                                    for r in pooled[is_mean].to_dict(orient="records")]
    if len(pooled):
        table = pd.concat([table, pooled], ignore_index=True)
        pairs["pairs"] = pd.concat([pairs["pairs"], pooled_pairs], ignore_index=True)
    return table


def _external_rows(plan: Plan, missing: list[str]) -> list[dict[str, Any]]:
    """One row per external validation: the macro AUROC of a run on another dataset."""
    rows = []
    for s in plan.of_kind("external"):
        if s.status != "done":
            missing.append(s.id)
            continue
        m = read_json_or_none(s.out / METRICS_FILE) or {}
        a = ((m.get("macro") or {}).get("metrics") or {}).get("auroc") or {}
        p = s.params
        rows.append({"train_dataset": p.train_dataset, "test_dataset": p.test_dataset, "recipe": p.recipe,
                     "seed": p.seed, "init": p.label, **p.condition.as_dict,
                     "n_findings": len(p.findings or []), "auroc": as_float(a.get("value")),
                     "auroc_lo": as_float(a.get("ci_low")), "auroc_hi": as_float(a.get("ci_high"))})
    return rows


def _weights(plan: Plan) -> dict[str, dict[str, Any]]:
    """Every init's weight file and its SHA-256 (domain and ssl arms: their base and pretraining runs)."""
    cfg = plan.study.config
    hashes = _HashCache(plan.study.layout.weight_hashes)
    weights: dict[str, dict[str, Any]] = {}
    for label, spec in cfg.inits.items():
        if spec.domain is not None or spec.ssl is not None:
            kind = "pretrain" if spec.domain is not None else "ssl"
            runs = [s for s in plan.of_kind(kind)
                    if s.id.startswith(f"{kind}/{label}/") and s.status == "done"]
            base_file, note = weight_files(spec.base or "")
            weights[label] = {"init": f"{spec.init} from {spec.base}",
                              "file": str(base_file) if base_file else note,
                              "sha256": hashes.sha(base_file) if base_file else None}
            for r in runs:
                f = r.out / RUN_BEST_WEIGHTS
                tail = r.id.split("/", 2)[-1] if kind == "ssl" else r.id.split("/", 3)[-1]
                weights[f"{label} ({tail})"] = {
                    "init": ("domain" if kind == "pretrain" else "self-supervised") + " pretraining run",
                    "file": str(f), "sha256": hashes.sha(f)}
            continue
        file, note = weight_files(spec.init)
        weights[label] = {"init": spec.init, "file": str(file) if file else note,
                          "sha256": hashes.sha(file) if file else None}
    hashes.save()
    return weights


def _provenance(plan: Plan) -> dict[str, Any]:
    """The report's provenance: config hash, commit, versions, bootstrap settings, weights."""
    study = plan.study
    cfg, ev = study.config, study.config.evaluation
    return {
        "config_hash": cfg.config_hash(),
        "study_config": str(study.path),
        "git_commit": git_commit(),
        "created": now_iso(),
        "versions": package_versions(),
        "bootstrap": {"seed": ev.seed, "n_resamples": ev.bootstrap, "cluster": ev.cluster, "ci": ev.ci,
                      "threshold": ev.threshold},
        "weights": _weights(plan),
    }
