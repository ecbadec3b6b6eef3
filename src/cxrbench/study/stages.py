"""Executors: one function per step kind, each calling the module that owns the stage.

Every executor takes ``(step, ctx)`` and writes only under ``step.out``; the runner handles
markers, locks, staleness and progress. Heavy modules are imported inside the functions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.errors import InputError
from cxrbench.fileio import atomic_write_json
from cxrbench.study.config import LoadedStudy, expand_path
from cxrbench.study.plan import INDEX_FILE, Plan, Step

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
    if step.out.exists() and any(step.out.iterdir()):
        if not (step.out / "_phantom").exists():
            raise InputError(
                "the phantom's folder exists and is not a phantom dataset",
                where=str(step.out),
                fix="give the phantom dataset an empty or new root (or remove its 'root:')",
            )
        shutil.rmtree(step.out)  # an earlier or partial phantom: regenerate (cheap, deterministic)
    generate(
        step.out,
        c["format"],
        int(c["patients"]),
        size=int(c["size"]),
        site=c["site"],
        seed=int(c["seed"]),
        **{"quiet": ctx.quiet, **dict(c.get("options") or {})},
    )


def index_options(ctx: Context, dataset: str) -> dict[str, Any]:
    """Keyword arguments of ``build_index`` for a dataset (paths in ``options`` resolved relative
    to the config file)."""
    spec = ctx.study.config.datasets[dataset]
    extra = dict(spec.options)
    for key in _PATH_OPTIONS:
        if extra.get(key) is not None:
            extra[key] = expand_path(
                str(extra[key]), ctx.study.path.parent, f"{ctx.study.path}: datasets.{dataset}.options.{key}"
            )
    return {
        "labels": spec.labels,
        "uncertain": spec.uncertain,
        "views": spec.views,
        "split_seed": spec.split_seed,
        **extra,
    }


def run_index(step: Step, ctx: Context) -> None:
    """Read the dataset's official metadata into a Contract-2 index (never opens an image)."""
    from cxrbench.indexing import build_index

    dataset = step.params["dataset"]
    root = Path(step.params["root"])
    if not root.is_dir():
        raise InputError(
            f"dataset folder {root} not found",
            where=f"{ctx.study.path}: datasets.{dataset}.root",
            fix="put the release there (layouts: docs/datasets.md) or correct 'root' / $CXRBENCH_DATA",
        )
    build_index(
        ctx.study.config.datasets[dataset].adapter,
        root,
        out=step.out / INDEX_FILE,
        **index_options(ctx, dataset),
    )


def run_cache(step: Step, ctx: Context) -> None:
    """Decode and preprocess every image of the index once (resumable)."""
    from cxrbench.cache import prepare_cache

    c = step.config
    prepare_cache(
        step.params["index"],
        step.params["root"],
        step.out,
        size=int(c["size"]),
        resize=c["resize"],
        equalize=bool(c["equalize"]),
        workers=step.params.get("workers"),
        quiet=ctx.quiet,
        overwrite=True,
    )


def train_config(step: Step, ctx: Context) -> Any:
    """The TrainConfig of a train or pretrain step."""
    from cxrbench.trainconfig import TrainConfig

    runtime = dict(step.params.get("runtime") or {})
    if ctx.device is not None:
        runtime["device"] = ctx.device
    return TrainConfig.from_dict(
        {
            **step.config["train"],
            **runtime,
            "cache": step.params["cache"],
            "init": step.params["init"],
            "out": str(step.out),
            "findings": step.params["findings"],
        },
        where=step.id,
    )


def run_train(step: Step, ctx: Context) -> None:
    """Fine-tune (or resume) one run; a domain pretraining run is an ordinary run on the source."""
    from cxrbench.train import train

    train(train_config(step, ctx), quiet=ctx.quiet)


def _threshold_args(ev: dict[str, Any]) -> dict[str, Any]:
    if ev["threshold"] == "fixed":
        return {"threshold_from": None, "thresholds": float(ev["fixed_threshold"])}
    return {"threshold_from": ev["threshold"], "thresholds": None}


def run_eval(step: Step, ctx: Context) -> None:
    """Predict the evaluation split and compute metrics with bootstrap CIs (Contract 4 eval folder)."""
    from cxrbench.evaluate import evaluate_run

    ev = step.config
    evaluate_run(
        step.params["run"],
        ev["split"],
        n_resamples=int(ev["bootstrap"]),
        seed=int(ev["seed"]),
        cluster=ev["cluster"],
        ci_level=float(ev["ci"]),
        repredict=True,
        predict_kwargs={"batch_size": int(ev["batch_size"]), "device": ctx.device},
        **_threshold_args(ev),
    )


def predict_on_cache(
    run_dir: str | Path,
    cache_dir: str | Path,
    split: str,
    findings: list[str],
    batch_size: int = 64,
    device: str | None = None,
) -> Any:
    """Contract-4 predictions of a run's model on another dataset's cache, for ``findings`` only
    (a subset of the run's findings that the cache also has)."""
    import numpy as np
    import pandas as pd
    import torch

    from cxrbench.augment import BatchTransform
    from cxrbench.data import CacheDataset
    from cxrbench.inference import check_recipe, load_run_model, predict_dataset

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, meta = load_run_model(run_dir, dev)
    cols = [meta["findings"].index(f) for f in findings]
    ds = CacheDataset(cache_dir, split=split, findings=findings)
    check_recipe(meta, ds.recipe, where=str(cache_dir))
    tf = BatchTransform(meta["mean"], meta["std"], out_size=int(meta["image_size"])).to(dev).eval()
    _, logits = predict_dataset(model, ds, tf, dev, batch_size=batch_size)
    probs = 1.0 / (1.0 + np.exp(-logits[:, cols].astype(np.float64)))
    out: dict[str, Any] = {"image_id": ds.image_ids.astype(str), "patient_id": ds.patient_ids.astype(str)}
    for k, f in enumerate(findings):
        out[f"p_{f}"] = probs[:, k].astype(np.float32)
    for k, f in enumerate(findings):
        out[f"y_{f}"] = ds.labels[:, k]
    return pd.DataFrame(out)


def run_external(step: Step, ctx: Context) -> None:
    """Evaluate a run trained on dataset A on dataset B's split, over the findings both share.

    The decision threshold comes from A's own validation split (the operating point a model
    would ship with), never from B.
    """
    from cxrbench.evaluate import (
        METRICS_FILE,
        PREDICTIONS_FILE,
        eval_dir,
        evaluate_predictions,
        read_predictions,
        write_predictions,
    )
    from cxrbench.provenance import provenance

    ev = step.config
    findings = list(step.params["findings"])
    run_dir = Path(step.params["run"])
    test = predict_on_cache(
        run_dir, step.params["cache"], ev["split"], findings, int(ev["batch_size"]), ctx.device
    )
    val = None
    if ev["threshold"] == "val":
        path = eval_dir(run_dir, "val") / PREDICTIONS_FILE
        if not path.is_file():
            raise InputError(
                "the run has no validation predictions",
                where=str(run_dir),
                fix="evaluate the run first (its eval step writes them)",
            )
        full = read_predictions(path)
        val = full[["image_id", "patient_id", *[f"p_{f}" for f in findings], *[f"y_{f}" for f in findings]]]
    args = _threshold_args(ev)
    metrics = evaluate_predictions(
        test,
        val,
        n_resamples=int(ev["bootstrap"]),
        seed=int(ev["seed"]),
        cluster=ev["cluster"],
        ci_level=float(ev["ci"]),
        **args,
    )
    write_predictions(
        test,
        step.out / PREDICTIONS_FILE,
        {"run": str(run_dir), "cache": step.params["cache"], "split": ev["split"]},
    )
    atomic_write_json(
        step.out / METRICS_FILE,
        _plain(
            {
                "run": str(run_dir),
                "split": ev["split"],
                "train_dataset": step.params["train_dataset"],
                "test_dataset": step.params["test_dataset"],
                **metrics,
                "provenance": provenance(),
            }
        ),
    )


def run_compare(step: Step, ctx: Context) -> None:
    """Paired comparisons of the inits on one dataset (bootstrap and DeLong, BH over findings)."""
    from cxrbench.compare import compare_predictions
    from cxrbench.evaluate import PREDICTIONS_FILE, eval_dir, read_predictions

    c = step.config
    ev = c["evaluation"]
    preds = {
        label: read_predictions(eval_dir(run, ev["split"]) / PREDICTIONS_FILE)
        for label, run in step.params["runs"].items()
    }
    reference = c["reference"] if not c["all_pairs"] else None
    if reference is not None and reference not in preds:
        raise InputError(
            f"the reference init {reference!r} has no run on {step.params['dataset']}",
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
    from cxrbench.fileio import atomic_path

    with atomic_path(step.out / "comparison.csv") as tmp:
        table.to_csv(tmp, index=False)
    atomic_write_json(
        step.out / "comparison.json",
        {
            "dataset": step.params["dataset"],
            "recipe": step.params["recipe"],
            "seed": step.params["seed"],
            "method": c["method"],
            "fdr": c["fdr"],
            "attrs": _plain(table.attrs),
            "rows": _plain(table.to_dict(orient="records")),
        },
    )


def _plain(obj: Any) -> Any:
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run_report(step: Step, ctx: Context) -> None:
    """Gather every result of the study and write index.html, report.md and results.csv."""
    from cxrbench.report import write_report
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
    "compare": run_compare,
    "report": run_report,
}
