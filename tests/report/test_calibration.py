"""report.calibration: calibration table, reliability diagrams, operating-point table."""

import io

import numpy as np
import pandas as pd
from PIL import Image

from cxrbench.evaluate.analysis import (
    CalibrationOptions,
    calibration_analysis,
    calibration_table,
    reliability_frame,
)
from cxrbench.evaluate.operating import operating_points
from cxrbench.evaluate.predictions import PredictionSet
from cxrbench.report import calibration as rc
from cxrbench.report.html import table_html


def preds(prefix, n, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "image_id": [f"{prefix}{i:04d}" for i in range(n)],
            "patient_id": [f"{prefix}p{i:04d}" for i in range(n)],
        }
    )
    for f in ("cardiomegaly", "edema"):
        y = (rng.random(n) < 0.3).astype(float)
        df[f"p_{f}"] = 1 / (1 + np.exp(-(3 * (2 * y - 1) + rng.normal(size=n) + shift)))
        df[f"y_{f}"] = y
    return df


def test_calibration_table_and_reliability_figure():
    test, val = PredictionSet.from_frame(preds("t", 300, 0)), PredictionSet.from_frame(preds("v", 300, 1))
    doc = calibration_analysis(
        test, val, options=CalibrationOptions(recalibrate="temperature"), n_resamples=30
    )
    t = rc.calibration_table(calibration_table(doc))
    assert len(t.rows) == 4 and t.rows[1][1].text == "recalibrated (temperature)" and t.rows[1][0].text == ""
    assert "(" in t.rows[0][2].text and "ECE" in table_html(t)
    png = rc.reliability_figure(reliability_frame(doc))
    img = Image.open(io.BytesIO(png))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and img.size[0] > img.size[1]  # two panels side by side
    assert rc.reliability_figure(reliability_frame(doc).iloc[:0]) is None


def test_calibration_table_marks_unstable_fits_and_warned_recalibration():
    rows = pd.DataFrame([
        {"finding": "edema", "stage": "before", "ece": 0.2, "slope": 40.0, "intercept": 0.3,
         "unstable": "unstable: slope 40 outside 0.1-10"},
        {"finding": "edema", "stage": "after", "method": "isotonic", "ece": 0.02, "slope": 1.0,
         "intercept": 0.0,
         "unstable": "", "warning": "isotonic recalibration fitted on only 2 validation positive(s)"},
    ])
    t = rc.calibration_table(rows)
    assert t.rows[0][4].text.endswith(rc.UNSTABLE) and "slope 40" in t.rows[0][4].title
    assert not t.rows[1][4].text.endswith(rc.UNSTABLE)
    assert t.rows[1][1].text.endswith(rc.UNSTABLE) and t.rows[1][2].style == "muted"
    assert any("do not read them as calibration" in n for n in t.notes)
    assert any(n.startswith("Warning: edema: isotonic recalibration fitted on only 2") for n in t.notes)


def test_operating_table_flags_a_threshold_that_does_not_transfer():
    out = operating_points(preds("t", 400, 2, shift=2.5), preds("v", 400, 3), n_resamples=50)
    t = rc.operating_table(out)
    assert [r[0].text for r in t.rows] == ["cardiomegaly", "edema"]
    assert t.rows[0][7].style == "sigworse"  # scores moved up at the target: J lost
