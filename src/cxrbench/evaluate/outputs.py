"""A run's evaluation outputs read back as objects: its predictions as a DataFrame, its metrics as
:class:`~cxrbench.evaluate.metrics_table.Metrics` (the dict plus a tidy table)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxrbench.common.layout import metrics_path, predictions_path
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.metrics_table import Metrics
from cxrbench.evaluate.predictions import PredictionSet, read_predictions
from cxrbench.evaluate.run_eval import read_metrics

SPLITS = ("train", "val", "test")


def load_predictions(source: str | os.PathLike, split: str = "test") -> pd.DataFrame:
    """The predictions of a run's split (or of a predictions Parquet file) as a DataFrame.

    Args:
        source: a run folder (``cxrbench.train``'s ``out``, evaluated by :func:`evaluate_run`) or a
            Contract-4 predictions file (``.parquet``).
        split: ``"test"`` (default), ``"val"`` or ``"train"`` (for a run folder).

    Returns:
        One row per image, in the file's order: ``image_id`` and ``patient_id`` (str),
        ``p_<finding>`` (float64 scores: probabilities in [0, 1] for every adaptation method),
        ``y_<finding>`` (float64 labels: 1, 0, NaN = unknown); ``df.attrs["findings"]`` lists the
        findings. The file is validated as ``evaluate`` reads it (InputError otherwise).

    Example::

        df = cxrbench.load_predictions("runs/nih", "test")
        df[["image_id", "p_effusion", "y_effusion"]].head()
    """
    path = Path(source)
    if path.is_dir():
        check_choice("split", split, SPLITS)
        path = predictions_path(path, split)
    df = read_predictions(path)
    ps = PredictionSet.from_frame(df, where=str(path))  # Contract 4: ids, one p_/y_ pair per finding
    for f in ps.findings:
        df[f"p_{f}"] = df[f"p_{f}"].astype("float64")
        df[f"y_{f}"] = df[f"y_{f}"].astype("float64")
    for col in ("image_id", "patient_id"):
        df[col] = df[col].astype(str)
    df.attrs["findings"] = list(ps.findings)
    df.attrs["where"] = str(path)
    return df


def load_metrics(source: str | os.PathLike, split: str = "test") -> Metrics:
    """The ``metrics.json`` of a run's split (or the file itself) as :class:`Metrics`.

    Args:
        source: a run folder evaluated by :func:`evaluate_run`, or a metrics.json file.
        split: ``"test"`` (default), ``"val"`` or ``"train"`` (for a run folder).

    Returns:
        The metrics dict (as :func:`evaluate_run` returned it, without ``"written"``); ``.table()``
        gives one row per finding (and ``mean``) and metric with its value and CI.

    Example::

        cxrbench.load_metrics("runs/nih").table().query("metric == 'auroc'")
    """
    path = Path(source)
    if path.is_dir():
        check_choice("split", split, SPLITS)
        path = metrics_path(path, split)
    return read_metrics(path)
