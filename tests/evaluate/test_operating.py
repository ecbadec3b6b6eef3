"""cxrbench.evaluate.operating: the source threshold on the target next to the target's own optimum."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cxrbench.common.errors import InputError
from cxrbench.evaluate.operating import OPERATING_COLUMNS, operating_points


def frame(prefix: str, n: int, shift: float, seed: int) -> pd.DataFrame:
    """Predictions whose scores are shifted by ``shift`` (a site whose scanner moves every score)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = 1 / (1 + np.exp(-(1.5 * y + rng.normal(size=n) - 0.75 + shift)))
    z = (rng.random(n) < 0.2).astype(float)
    return pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in range(n)],
                         "patient_id": [f"{prefix}p{i // 2:04d}" for i in range(n)],
                         "p_cardiomegaly": s, "y_cardiomegaly": y, "p_hernia": rng.random(n),
                         "y_hernia": z * 0})


def youden(y, s):
    fpr, tpr, thr = skm.roc_curve(y, s)
    i = int(np.argmax(tpr - fpr))
    return thr[i], tpr[i], 1 - fpr[i]


def test_source_threshold_versus_target_optimum():
    source_val, target = frame("v", 500, 0.0, 0), frame("t", 600, 1.5, 1)
    out = operating_points(target, source_val, n_resamples=100, seed=2)
    assert list(out.columns) == list(OPERATING_COLUMNS)
    row = out.set_index("finding").loc["cardiomegaly"]
    t_src, _, _ = youden(source_val["y_cardiomegaly"], source_val["p_cardiomegaly"])
    assert row["source_threshold"] == t_src
    y, s = target["y_cardiomegaly"].to_numpy().astype(int), target["p_cardiomegaly"].to_numpy()
    assert row["sensitivity_at_source"] == pytest.approx(skm.recall_score(y, s >= t_src))
    assert row["specificity_at_source"] == pytest.approx(skm.recall_score(y, s >= t_src, pos_label=0))
    t_own, sens, spec = youden(y, s)
    assert row["target_threshold"] == t_own and row["sensitivity_at_target"] == pytest.approx(sens)
    assert row["specificity_at_target"] == pytest.approx(spec)
    # every score moved up at the target: the source threshold over-calls, costing specificity and J
    assert row["specificity_at_source"] < row["specificity_at_target"]
    assert row["youden_loss"] == pytest.approx(row["youden_at_target"] - row["youden_at_source"])
    assert row["youden_loss_lo"] > 0 and row["sensitivity_at_source_lo"] <= row["sensitivity_at_source"]
    hernia = out.set_index("finding").loc["hernia"]
    assert "not estimable" in hernia["note"] and np.isnan(hernia["youden_loss"])


def test_thresholds_given_instead_of_source_predictions():
    target = frame("t", 300, 0.0, 3).drop(columns=["p_hernia", "y_hernia"])
    out = operating_points(target, thresholds={"cardiomegaly": 0.4}, n_resamples=0)
    row = out.iloc[0]
    y, s = target["y_cardiomegaly"].to_numpy().astype(int), target["p_cardiomegaly"].to_numpy()
    assert row["source_threshold"] == 0.4
    assert row["sensitivity_at_source"] == pytest.approx(skm.recall_score(y, s >= 0.4))
    assert np.isnan(row["sensitivity_at_source_lo"])
    with pytest.raises(InputError, match="one of them"):
        operating_points(target)
    with pytest.raises(InputError, match="not in the source validation predictions"):
        operating_points(target.rename(columns={"p_cardiomegaly": "p_edema", "y_cardiomegaly": "y_edema"}),
                         frame("v", 50, 0, 4))
