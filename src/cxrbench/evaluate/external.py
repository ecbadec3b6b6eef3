"""External validation: a run trained on dataset A scored on dataset B's cache, over the findings both have.

:func:`evaluate_external` scores the other cache's split through the one prediction path
(:func:`cxrbench.evaluate.inference.predict_split`, in the run's training precision), computes the
metrics with bootstrap CIs (:func:`cxrbench.evaluate.scoring.evaluate_predictions`) with the decision
thresholds chosen on A's own validation split (the operating point a model would ship with, never
one chosen on B), and, beside them, the operating points (:mod:`cxrbench.evaluate.operating`: the
source threshold against B's own Youden optimum). It writes ``predictions.parquet``, ``metrics.json``
and ``operating.json`` into its output folder. ``cxrbench evaluate RUN --external CACHE --out DIR``
and the study's ``external`` steps both come here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.common.layout import METRICS_FILE, OPERATING_FILE, PREDICTIONS_FILE
from cxrbench.common.provenance import provenance
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.predictions import write_predictions
from cxrbench.evaluate.scoring import evaluate_predictions, threshold_source
from cxrbench.stats import bootstrap as bs


def shared_findings(run_dir: str | os.PathLike, cache_dir: str | os.PathLike) -> list[str]:
    """The run's findings that the cache also labels, in the run's order (InputError when none)."""
    from cxrbench.cache.read import open_cache
    from cxrbench.train.checkpoint import read_best_meta

    run_findings = list(read_best_meta(run_dir)["findings"])
    have = set(open_cache(cache_dir).findings)
    shared = [f for f in run_findings if f in have]
    if not shared:
        raise InputError("the run and the cache share no finding", where=str(cache_dir),
                         fix=f"the run predicts {', '.join(run_findings)}")
    return shared


def evaluate_external(run_dir: str | os.PathLike, cache_dir: str | os.PathLike, out: str | os.PathLike, *,
                      split: str = "test", findings: Sequence[str] | None = None, n_resamples: int = 1000,
                      seed: int = 0, cluster: str = "patient", ci_level: float = 0.95,
                      threshold_from: str | None = "val",
                      thresholds: float | Mapping[str, float] | None = None,
                      batch_size: int = 64, device: str | None = None,
                      context: Mapping[str, Any] | None = None,
                      memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> dict[str, Any]:
    """Score ``run_dir`` on ``split`` of ``cache_dir`` and write the results into the folder ``out``.

    ``findings``: the findings to score (default: those the run and the cache share). Thresholds come
    from the run's own validation predictions (``threshold_from="val"``; its ``eval/val`` predictions
    are reused when they belong to its weights), the evaluated split itself (``"test"``, optimistic) or
    ``thresholds`` (fixed). ``context`` adds keys to ``metrics.json`` (a study's train and test
    dataset). Returns the metrics dict.
    """
    from cxrbench.evaluate.inference import predict_split
    from cxrbench.evaluate.run_eval import get_predictions

    check_choice("--split", split, ("train", "val", "test"))
    check_choice("--cluster", cluster, bs.CLUSTERS)
    source = threshold_source(threshold_from, thresholds)
    run_dir, out = Path(run_dir), Path(out)
    wanted = list(findings) if findings is not None else shared_findings(run_dir, cache_dir)
    test = predict_split(run_dir, split, cache_dir=cache_dir, batch_size=batch_size, device=device,
                         findings=wanted)
    val = None
    if source == "val":
        full, _ = get_predictions(run_dir, "val", predict_kwargs={"batch_size": batch_size, "device": device})
        val = full[["image_id", "patient_id", *[f"p_{f}" for f in wanted], *[f"y_{f}" for f in wanted]]]
    metrics = evaluate_predictions(test, val, threshold_from=threshold_from, thresholds=thresholds,
                                   n_resamples=n_resamples, seed=seed, cluster=cluster, ci_level=ci_level,
                                   memory_bytes=memory_bytes)
    operating = None
    if val is not None:  # the cost of a threshold that does not transfer: source's vs target's optimum
        from cxrbench.evaluate.operating import operating_points

        operating = operating_points(test, val, n_resamples=n_resamples, seed=seed, cluster=cluster,
                                     ci_level=ci_level, memory_bytes=memory_bytes)
    write_predictions(test, out / PREDICTIONS_FILE, {"run": str(run_dir), "cache": str(cache_dir),
                                                     "split": split})
    if operating is not None:
        atomic_write_json(out / OPERATING_FILE, {"rows": json.loads(operating.to_json(orient="records"))})
    doc = {"run": str(run_dir), "split": split, **dict(context or {}), **metrics, "provenance": provenance()}
    atomic_write_json(out / METRICS_FILE, doc)
    return doc
