"""Executors: one function per step kind, each calling the module that owns the stage.

Every executor takes ``(step, ctx)`` and writes only under ``step.out``; ``step.params`` is the
kind's typed params object (:mod:`cxrbench.study.steps`). The runner handles markers, locks,
staleness and progress. Heavy modules are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.common.layout import (
    INDEX_FILE,
    METRICS_FILE,
    OPERATING_FILE,
    POOLED_FILE,
    PREDICTIONS_FILE,
    predictions_path,
)
from cxrbench.study.config import LoadedStudy
from cxrbench.study.load import expand_path
from cxrbench.study.steps import (
    CacheParams,
    CompareParams,
    EvalParams,
    ExternalParams,
    IndexParams,
    Plan,
    PooledParams,
    ShortcutParams,
    SslParams,
    Step,
    TrainParams,
)

POOLED_FORMAT = "cxrbench.pooled/1"

_PATH_OPTIONS = ("labels_file", "mapping")


@dataclass
class Context:
    """What every executor may use besides its step."""

    study: LoadedStudy
    plan: Plan
    quiet: bool = False
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Executor = Callable[[Step, Context], Any]


def run_phantom(step: Step, ctx: Context) -> None:
    """Generate a synthetic dataset in its official layout (the dataset's root)."""
    from cxrbench.phantom import generate

    c = step.config
    # an earlier or interrupted phantom is regenerated (cheap, deterministic): generate replaces only
    # files its marker lists, and refuses a folder holding anything else
    generate(
        step.out,
        c["format"],
        int(c["patients"]),
        size=int(c["size"]),
        site=c["site"],
        seed=int(c["seed"]),
        **{"quiet": ctx.quiet, **dict(c.get("options") or {}), "overwrite": True},
    )


def index_options(study: LoadedStudy, dataset: str) -> Any:
    """The :class:`~cxrbench.index.sources.base.IndexOptions` of a dataset (paths in ``options``
    resolved relative to the config file)."""
    from cxrbench.index.sources.base import IndexOptions

    spec = study.config.datasets[dataset]
    extra = dict(spec.options)
    for key in _PATH_OPTIONS:
        if extra.get(key) is not None:
            extra[key] = expand_path(
                str(extra[key]), study.path.parent, f"{study.path}: datasets.{dataset}.options.{key}"
            )
    values = {"labels": spec.labels, "uncertain": spec.uncertain, "views": spec.views,
              "split_seed": spec.split_seed, **extra}
    return IndexOptions.from_dict(values, where=f"{study.path}: datasets.{dataset}")


def run_index(step: Step, ctx: Context) -> None:
    """Read the dataset's official metadata into a Contract-2 index (never opens an image)."""
    from cxrbench.index.build import build_index

    p: IndexParams = step.params
    root = Path(p.root)
    if not root.is_dir():
        raise InputError(
            f"dataset folder {root} not found",
            where=f"{ctx.study.path}: datasets.{p.dataset}.root",
            fix="put the release there (layouts: docs/datasets.md) or correct 'root' / $CXRBENCH_DATA",
        )
    _, _, report = build_index(ctx.study.config.datasets[p.dataset].adapter, root, out=step.out / INDEX_FILE,
                               options=index_options(ctx.study, p.dataset))
    import warnings

    for line in report.get("warnings", []):  # on the study's console too, not only in index.report.json
        warnings.warn(f"index of {p.dataset}: {line}", UserWarning, stacklevel=2)


def run_cache(step: Step, ctx: Context) -> None:
    """Decode and preprocess every image of the index once (resumable)."""
    from cxrbench.cache.build import prepare_cache

    p: CacheParams = step.params
    c = step.config
    prepare_cache(p.index, p.root, step.out, size=int(c["size"]), resize=c["resize"],
                  equalize=bool(c["equalize"]), resample=c.get("resample") or "area", workers=p.workers,
                  quiet=ctx.quiet, overwrite=True)


def train_config(step: Step, ctx: Context) -> Any:
    """The TrainConfig of a train or pretrain step."""
    from cxrbench.train.config import TrainConfig

    p: TrainParams = step.params
    runtime = dict(p.runtime)
    if ctx.device is not None:
        runtime["device"] = ctx.device
    return TrainConfig.from_dict(
        {**step.config["train"], **runtime, "cache": p.cache, "init": p.init, "out": str(step.out),
         "findings": p.findings},
        where=step.id,
    )


def run_train(step: Step, ctx: Context) -> None:
    """Fine-tune (or resume) one run; a domain pretraining run is an ordinary run on the source."""
    from cxrbench.train.loop import train

    train(train_config(step, ctx), quiet=ctx.quiet)


def _threshold_args(ev: dict[str, Any]) -> dict[str, Any]:
    if ev["threshold"] == "fixed":
        return {"threshold_from": None, "thresholds": float(ev["fixed_threshold"])}
    return {"threshold_from": ev["threshold"], "thresholds": None}


def run_eval(step: Step, ctx: Context) -> None:
    """Predict the evaluation split and compute metrics with bootstrap CIs (Contract 4 eval folder)."""
    from cxrbench.evaluate.run_eval import evaluate_run

    p: EvalParams = step.params
    ev = step.config
    evaluate_run(
        p.run,
        ev["split"],
        n_resamples=int(ev["bootstrap"]),
        seed=int(ev["seed"]),
        cluster=ev["cluster"],
        ci_level=float(ev["ci"]),
        repredict=True,
        predict_kwargs={"batch_size": int(ev["batch_size"]), "device": ctx.device},
        on_conflict="overwrite",  # the study's own eval step: its key names the settings
        **_threshold_args(ev),
    )


def run_external(step: Step, ctx: Context) -> None:
    """Evaluate a run trained on dataset A on dataset B's split, over the findings both share.

    Scored by the one prediction path (:func:`cxrbench.evaluate.inference.predict_split`, in the
    run's training precision); the decision threshold comes from A's own validation split (the
    operating point a model would ship with), never from B.
    """
    from cxrbench.common.provenance import provenance
    from cxrbench.evaluate.inference import predict_split
    from cxrbench.evaluate.predictions import read_predictions, write_predictions
    from cxrbench.evaluate.scoring import evaluate_predictions

    p: ExternalParams = step.params
    ev = step.config
    findings = list(p.findings or [])
    run_dir = Path(p.run)
    test = predict_split(run_dir, ev["split"], cache_dir=p.cache, batch_size=int(ev["batch_size"]),
                         device=ctx.device, findings=findings)
    val = None
    if ev["threshold"] == "val":
        path = predictions_path(run_dir, "val")
        if not path.is_file():
            raise InputError(
                "the run has no validation predictions",
                where=str(run_dir),
                fix="evaluate the run first (its eval step writes them)",
            )
        full = read_predictions(path)
        val = full[["image_id", "patient_id", *[f"p_{f}" for f in findings], *[f"y_{f}" for f in findings]]]
    metrics = evaluate_predictions(
        test,
        val,
        n_resamples=int(ev["bootstrap"]),
        seed=int(ev["seed"]),
        cluster=ev["cluster"],
        ci_level=float(ev["ci"]),
        **_threshold_args(ev),
    )
    write_predictions(test, step.out / PREDICTIONS_FILE, {"run": str(run_dir), "cache": p.cache,
                                                          "split": ev["split"]})
    if val is not None:  # the cost of a threshold that does not transfer: source's vs target's optimum
        from cxrbench.evaluate.operating import operating_points

        op = operating_points(test, val, n_resamples=int(ev["bootstrap"]), seed=int(ev["seed"]),
                              cluster=ev["cluster"], ci_level=float(ev["ci"]))
        atomic_write_json(step.out / OPERATING_FILE, {"rows": json.loads(op.to_json(orient="records"))})
    atomic_write_json(step.out / METRICS_FILE, {
        "run": str(run_dir),
        "split": ev["split"],
        "train_dataset": p.train_dataset,
        "test_dataset": p.test_dataset,
        **metrics,
        "provenance": provenance(),
    })


def run_compare(step: Step, ctx: Context) -> None:
    """Paired comparisons of the inits on one dataset (bootstrap and DeLong, BH over findings)."""
    from cxrbench.evaluate.compare import compare_predictions, write_comparison
    from cxrbench.evaluate.predictions import read_predictions

    p: CompareParams = step.params
    c = step.config
    ev = c["evaluation"]
    preds = {label: read_predictions(predictions_path(run, ev["split"])) for label, run in p.runs.items()}
    reference = c["reference"] if not c["all_pairs"] else None
    if reference is not None and reference not in preds:
        raise InputError(
            f"the reference init {reference!r} has no run on {p.dataset}",
            where=step.id,
            fix="train it on every dataset, or use all_pairs: true",
        )
    table = compare_predictions(
        preds,
        reference,
        n_resamples=max(1, int(ev["bootstrap"])),
        seed=int(ev["seed"]),
        cluster=ev["cluster"],
        alternative=c["alternative"],
        ci_level=float(ev["ci"]),
    )
    if c["fdr"] == "none":
        table["p_adjusted"] = table["p_bootstrap"]
        table["p_delong_adjusted"] = table["p_delong"]
    step.out.mkdir(parents=True, exist_ok=True)
    write_comparison(table, step.out / "comparison.csv")
    write_comparison(table, step.out / "comparison.json", runs=p.runs,
                     context={"dataset": p.dataset, "recipe": p.recipe, "seed": p.seed,
                              "method": c["method"], "fdr": c["fdr"]})


def run_ssl(step: Step, ctx: Context) -> None:
    """The self-supervised pretraining run of an ``ssl:`` arm (``cxrbench pretrain``): resumes an
    interrupted run from its ``last.pt``; the teacher backbone becomes the arm's fine-tuning init."""
    from cxrbench.pretrain.config import PretrainConfig
    from cxrbench.pretrain.loop import pretrain

    p: SslParams = step.params
    runtime = {**p.runtime, **({"device": ctx.device} if ctx.device else {})}
    cfg = PretrainConfig.from_dict({"caches": p.caches, "unlabeled": p.unlabeled, "exclude": p.exclude,
                                    "init": p.init, "out": str(step.out), **p.options, **runtime},
                                   where=step.id)
    pretrain(cfg, quiet=ctx.quiet)


def run_shortcut(step: Step, ctx: Context) -> None:
    """The metadata-only baseline of one dataset (``cxrbench shortcut``): val and test predictions."""
    from cxrbench.evaluate.shortcut import write_shortcut

    p: ShortcutParams = step.params
    write_shortcut(p.cache, step.out)


def run_pooled(step: Step, ctx: Context) -> None:
    """Every arm of one dataset/recipe/condition pooled over its seeds (mean over seeds, two-level
    bootstrap CI over seeds and patients, seed SD, seed-ensemble AUROC), and the paired comparisons
    of the pooled arms (BH over findings as in ``compare``); written to ``pooled.json``."""
    from cxrbench.common.provenance import provenance
    from cxrbench.evaluate.pooled import compare_arms, pooled_metrics
    from cxrbench.evaluate.predictions import read_predictions

    p: PooledParams = step.params
    c = step.config
    ev = c["evaluation"]
    frames = {label: [read_predictions(predictions_path(run, ev["split"])) for run in runs]
              for label, runs in p.runs.items()}
    settings = {"n_resamples": max(1, int(ev["bootstrap"])), "seed": int(ev["seed"]),
                "cluster": ev["cluster"], "ci_level": float(ev["ci"])}
    metrics = pooled_metrics(frames, **settings)
    table = None
    if len(frames) >= 2:
        reference = c["reference"] if not c["all_pairs"] and c["reference"] in frames else None
        table = compare_arms(frames, reference, alternative=c["alternative"], **settings)
        if c["fdr"] == "none":
            table["p_adjusted"] = table["p_bootstrap"]
    step.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(step.out / POOLED_FILE, {
        "format": POOLED_FORMAT, "dataset": p.dataset, "recipe": p.recipe, "seeds": p.seeds,
        "condition": p.condition.as_dict, "runs": p.runs, "settings": settings,
        "metrics": json.loads(metrics.to_json(orient="records")),
        "comparisons": json.loads(table.to_json(orient="records")) if table is not None else [],
        "provenance": provenance(),
    })


def run_report(step: Step, ctx: Context) -> None:
    """Gather every result of the study and write index.html, report.md and results.csv."""
    from cxrbench.report.write import write_report
    from cxrbench.study.gather import gather_results

    write_report(gather_results(ctx.plan), step.out)


EXECUTORS: dict[str, Executor] = {
    "phantom": run_phantom,
    "index": run_index,
    "cache": run_cache,
    "pretrain": run_train,
    "train": run_train,
    "eval": run_eval,
    "external": run_external,
    "ssl": run_ssl,
    "compare": run_compare,
    "shortcut": run_shortcut,
    "pooled": run_pooled,
    "report": run_report,
}
