"""A run's evaluation outputs as objects: predictions as a DataFrame, metrics with a table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.common.layout import metrics_path, predictions_path
from cxrbench.evaluate.metrics_table import Metrics
from cxrbench.evaluate.outputs import load_metrics, load_predictions
from cxrbench.evaluate.predictions import write_predictions
from cxrbench.evaluate.scoring import evaluate_predictions


def fake_run(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"image_id": [f"i{i:02d}" for i in range(n)][::-1],
                       "patient_id": [f"p{i}" for i in range(n)],
                       "p_a": rng.random(n).astype(np.float32),
                       "y_a": rng.integers(0, 2, n).astype(np.float32)})
    run = tmp_path / "run"
    write_predictions(df, predictions_path(run, "test"), {"note": "test"})
    metrics = evaluate_predictions(df, None, threshold_from="test", n_resamples=10)
    atomic_write_json(metrics_path(run, "test"), metrics)
    return run, df


def test_load_predictions_of_a_run_and_of_a_file(tmp_path):
    run, df = fake_run(tmp_path)
    got = load_predictions(run)  # split "test" by default
    assert got.attrs["findings"] == ["a"] and len(got) == len(df)
    assert got["p_a"].dtype == "float64" and got["y_a"].dtype == "float64"  # float32 on disk
    assert got["image_id"].tolist() == sorted(df["image_id"])  # as written: sorted by image id
    same = load_predictions(predictions_path(run, "test"))
    assert same.equals(got)
    with pytest.raises(InputError, match="predictions file not found"):
        load_predictions(run, "val")
    with pytest.raises(InputError, match="^split got 'tset'.*did you mean 'test'"):
        load_predictions(run, "tset")


def test_load_metrics_gives_the_dict_and_its_table(tmp_path):
    run, _ = fake_run(tmp_path)
    m = load_metrics(run)
    assert isinstance(m, Metrics) and m["findings"] == ["a"]
    assert set(m.table()["finding"]) == {"a", "mean"}
    with pytest.raises(InputError, match="not found"):
        load_metrics(run, "val")
