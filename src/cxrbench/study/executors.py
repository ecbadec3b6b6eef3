"""Executors: one function per step kind, each calling the module that owns the stage.

Every executor takes ``(step, ctx)`` and writes only under ``step.out``; ``step.params`` is the
kind's typed params object (:mod:`cxrbench.study.steps`). The runner handles markers, locks,
staleness and progress. Heavy modules are imported inside the functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.common.errors import CxrbenchWarning, InputError, warn
from cxrbench.common.layout import COMPARISON_CSV, COMPARISON_JSON, INDEX_FILE, POOLED_FILE, predictions_path
from cxrbench.study.config import LoadedStudy
from cxrbench.study.load import expand_path
from cxrbench.study.sections import EvaluationSpec
from cxrbench.study.steps import (
    CacheParams,
    CompareParams,
    EvalParams,
    ExternalParams,
    IndexParams,
    LocalizationParams,
    Plan,
    PooledParams,
    ShortcutParams,
    SslParams,
    Step,
    TrainParams,
    TunedParams,
    TuneParams,
)

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

    ph = step.params.phantom
    # an earlier or interrupted phantom is regenerated (cheap, deterministic): generate replaces only
    # files its marker lists, and refuses a folder holding anything else
    generate(step.out, ph.format, ph.patients, size=ph.size, site=ph.site, seed=ph.seed,
             **{"quiet": ctx.quiet, **ph.options, "overwrite": True})


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
    with warnings.catch_warnings():  # issued again below, naming the dataset
        warnings.simplefilter("ignore", CxrbenchWarning)
        _, _, report = build_index(ctx.study.config.datasets[p.dataset].adapter, root,
                                   out=step.out / INDEX_FILE, options=index_options(ctx.study, p.dataset))
    for line in report.get("warnings", []):  # on the study's console too, not only in index.report.json
        warn(f"index of {p.dataset}: {line}")


def run_cache(step: Step, ctx: Context) -> None:
    """Decode and preprocess every image of the index once (resumable)."""
    from cxrbench.cache.build import prepare_cache

    p: CacheParams = step.params
    r = p.spec
    prepare_cache(p.index, p.root, step.out, size=r.size, resize=r.resize, equalize=r.equalize,
                  resample=r.resample or "area", workers=p.workers, quiet=ctx.quiet, overwrite=True)


def train_config(step: Step, ctx: Context) -> Any:
    """The TrainConfig of a train or pretrain step (a tuned run: at the values its tuning chose)."""
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.tune import chosen_options

    p: TrainParams = step.params
    runtime = dict(p.runtime)
    if ctx.device is not None:
        runtime["device"] = ctx.device
    chosen = chosen_options(p.tuning) if p.tuning is not None else {}
    return TrainConfig.from_dict(
        {**p.options, **chosen, **runtime, "cache": p.cache, "init": p.init, "out": str(step.out),
         "findings": p.findings},
        where=step.id,
    )


def run_tune(step: Step, ctx: Context) -> None:
    """One tuning trial on the train and val splits only (:func:`cxrbench.train.tune.run_trial`)."""
    from cxrbench.train.tune import run_trial

    p: TuneParams = step.params
    runtime = {**p.runtime, **({"device": ctx.device} if ctx.device else {})}
    run_trial({**p.options, **runtime}, step.out, point=p.point, order=p.order, previous=p.previous,
              slot=p.slot, rung=p.rung, epochs=p.epochs, keep_weights=p.keep_weights, quiet=ctx.quiet)


def run_tuned(step: Step, ctx: Context) -> None:
    """The choice among an arm's trials (:func:`cxrbench.train.tune.select_trials`): tuning.json."""
    from cxrbench.train.tune import TUNING_FILE, select_trials

    p: TunedParams = step.params
    select_trials(p.trials, step.out / TUNING_FILE, settings=p.settings, rungs=p.rungs, default=p.default)


def run_train(step: Step, ctx: Context) -> None:
    """Fine-tune (or resume) one run; a domain pretraining run is an ordinary run on the source."""
    from cxrbench.train.loop import train

    train(train_config(step, ctx), quiet=ctx.quiet)


def evaluation_args(ev: EvaluationSpec) -> dict[str, Any]:
    """The keyword arguments of the evaluate stage's functions for a study's evaluation section."""
    thresholds = {"threshold_from": None, "thresholds": ev.fixed_threshold} if ev.threshold == "fixed" else \
        {"threshold_from": ev.threshold, "thresholds": None}
    return {"n_resamples": ev.bootstrap, "seed": ev.seed, "cluster": ev.cluster, "ci_level": ev.ci,
            **thresholds}


def run_eval(step: Step, ctx: Context) -> None:
    """Predict the evaluation split and compute metrics with bootstrap CIs (Contract 4 eval folder)."""
    from cxrbench.evaluate.run_eval import evaluate_run

    p: EvalParams = step.params
    ev = p.evaluation
    evaluate_run(p.run, ev.split, repredict=True, predict_kwargs={"batch_size": ev.batch_size,
                                                                    "device": ctx.device},
                 on_conflict="overwrite",  # the study's own eval step: its key names the settings
                 study_level=ev.study_level, **evaluation_args(ev))


def run_external(step: Step, ctx: Context) -> None:
    """A run trained on dataset A scored on dataset B's split over the findings both share, thresholds
    from A's own validation split (:func:`cxrbench.evaluate.external.evaluate_external`)."""
    from cxrbench.evaluate.external import evaluate_external

    p: ExternalParams = step.params
    ev = p.evaluation
    evaluate_external(p.run, p.cache, step.out, split=ev.split, findings=list(p.findings or []),
                      batch_size=ev.batch_size, device=ctx.device,
                      context={"train_dataset": p.train_dataset, "test_dataset": p.test_dataset},
                      **evaluation_args(ev))


def _resample_args(ev: EvaluationSpec) -> dict[str, Any]:
    return {"n_resamples": max(1, ev.bootstrap), "seed": ev.seed, "cluster": ev.cluster, "ci_level": ev.ci}


def run_compare(step: Step, ctx: Context) -> None:
    """Paired comparisons of the inits on one dataset (bootstrap and DeLong, BH over findings)."""
    from cxrbench.evaluate.compare import compare_predictions, write_comparison
    from cxrbench.evaluate.predictions import read_predictions

    p: CompareParams = step.params
    c, ev = p.comparison, p.evaluation
    preds = {label: read_predictions(predictions_path(run, ev.split)) for label, run in p.runs.items()}
    reference = c.reference if not c.all_pairs else None
    if reference is not None and reference not in preds:
        raise InputError(f"the reference init {reference!r} has no run on {p.dataset}", where=step.id,
                         fix="train it on every dataset, or use all_pairs: true")
    table = compare_predictions(preds, reference, alternative=c.alternative, fdr=c.fdr, **_resample_args(ev))
    step.out.mkdir(parents=True, exist_ok=True)
    write_comparison(table, step.out / COMPARISON_CSV)
    write_comparison(table, step.out / COMPARISON_JSON, runs=p.runs,
                     context={"dataset": p.dataset, "recipe": p.recipe, "seed": p.seed, "method": c.method,
                              "fdr": c.fdr})


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
    of the pooled arms (BH over findings as in ``compare``), in the comparison format (``pooled.json``)."""
    from cxrbench.evaluate.compare import write_comparison
    from cxrbench.evaluate.pooled import pooled_comparison
    from cxrbench.evaluate.predictions import read_predictions

    p: PooledParams = step.params
    c, ev = p.comparison, p.evaluation
    frames = {label: [read_predictions(predictions_path(run, ev.split)) for run in runs]
              for label, runs in p.runs.items()}
    reference = c.reference if not c.all_pairs and c.reference in frames else None
    metrics, table = pooled_comparison(frames, reference, alternative=c.alternative, fdr=c.fdr,
                                       **_resample_args(ev))
    step.out.mkdir(parents=True, exist_ok=True)
    write_comparison(table, step.out / POOLED_FILE, runs=p.runs, metrics=metrics,
                     context={"dataset": p.dataset, "recipe": p.recipe, "seeds": p.seeds,
                              "condition": p.condition.as_dict, "fdr": c.fdr})


def run_localization(step: Step, ctx: Context) -> None:
    """A run's saliency maps scored against the regions of its evaluation split (pointing game, energy,
    IoU and hit against chance, :func:`cxrbench.evaluate.localization.evaluate_localization`)."""
    from cxrbench.evaluate.localization import LocalizationOptions, evaluate_localization

    p: LocalizationParams = step.params
    loc, ev = p.localization, p.evaluation
    options = LocalizationOptions(method=loc.method, levels=loc.levels, hit_iou=loc.hit_iou,
                                  batch_size=loc.batch_size)
    evaluate_localization(p.run, ev.split, cache_dir=p.cache, device=ctx.device, out_dir=step.out,
                          options=options, missing_ok=not p.required, **_resample_args(ev))


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
    "tune": run_tune,
    "tuned": run_tuned,
    "compare": run_compare,
    "shortcut": run_shortcut,
    "pooled": run_pooled,
    "localization": run_localization,
    "report": run_report,
}
