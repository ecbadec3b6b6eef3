"""The metrics of an evaluation as a tidy table beside the nested dict (evaluate/metrics_table.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.fileio import json_safe
from cxrbench.evaluate.metrics_table import TABLE_COLUMNS, Metrics, metrics_table
from cxrbench.evaluate.scoring import evaluate_predictions


def predictions(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 2)).astype(float)
    y[:5, 1] = np.nan  # unknown labels
    return pd.DataFrame({"image_id": [f"i{i:03d}" for i in range(n)],
                         "patient_id": [f"p{i // 2}" for i in range(n)],
                         "p_a": np.clip(y[:, 0] * 0.4 + rng.random(n) * 0.6, 0, 1), "y_a": y[:, 0],
                         "p_b": rng.random(n), "y_b": y[:, 1]})


def test_the_table_holds_every_number_of_the_dict_tidily():
    m = evaluate_predictions(predictions(), predictions(seed=1), n_resamples=30)
    assert isinstance(m, Metrics) and isinstance(m, dict)
    t = m.table()
    assert list(t.columns) == list(TABLE_COLUMNS)
    metrics = list(m["per_finding"]["a"]["metrics"])
    assert len(t) == 3 * len(metrics) and set(t["finding"]) == {"a", "b", "mean"}
    assert not t.duplicated(["finding", "metric"]).any()
    for r in t.itertuples():
        src = m["macro"] if r.finding == "mean" else m["per_finding"][r.finding]
        entry = src["metrics"][r.metric]
        assert r.value == pytest.approx(entry["value"], nan_ok=True)
        assert r.ci_low == pytest.approx(entry["ci_low"], nan_ok=True)
        assert r.n_resamples_used == entry["n_resamples_used"]
    a = t[(t["finding"] == "a") & (t["metric"] == "auroc")].iloc[0]
    assert a["n"] == m["per_finding"]["a"]["n"]
    assert a["threshold"] == pytest.approx(m["per_finding"]["a"]["threshold"])
    assert bool(a["estimable"]) and pd.isna(t[t["finding"] == "mean"]["n"]).all()
    assert t["value"].dtype == "float64" and str(t["n"].dtype) == "Int64"
    assert str(t["finding"].dtype) == "string"
    assert t.attrs == {"ci_level": 0.95, "threshold_source": "val"}


def test_a_dict_read_back_from_json_gives_the_same_table():
    m = evaluate_predictions(predictions(), None, threshold_from="test", n_resamples=20)
    back = json.loads(json.dumps(json_safe(m)))  # NaN -> null, as metrics.json holds it
    pd.testing.assert_frame_equal(metrics_table(back), m.table())
