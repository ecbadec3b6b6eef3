"""cxrbench.evaluate.studylevel: image scores aggregated per study (max, mean) with known answers, label
conflicts counted, and study_metrics.json written by evaluate_run (and the CLI) beside metrics.json."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import STUDY_METRICS_FILE
from cxrbench.evaluate.scoring import evaluate_predictions
from cxrbench.evaluate.studylevel import aggregate_studies, study_keys, study_level_metrics


def frame():
    """Two studies of two images (one with conflicting labels), one study of one image, one image
    without a study id; two patients share the study id 's1' (a per-patient numbering, as CheXpert's)."""
    return pd.DataFrame({
        "image_id": ["a_front", "a_lat", "b_front", "b_lat", "c", "d"],
        "patient_id": ["p1", "p1", "p2", "p2", "p3", "p1"],
        "p_mass": [0.2, 0.8, 0.1, 0.3, 0.9, 0.4],
        "y_mass": [1.0, 1.0, 0.0, 1.0, np.nan, 0.0],
    })


STUDIES = np.array(["s1", "s1", "s1", "s1", "s7", None], dtype=object)


def test_max_and_mean_of_each_study_with_the_largest_known_label():
    for how, want in (("max", [0.8, 0.4, 0.3, 0.9]), ("mean", [0.5, 0.4, 0.2, 0.9])):
        out, info = aggregate_studies(frame(), STUDIES, how)
        assert list(out["image_id"]) == ["p1/image:d", "p1/s1", "p2/s1", "p3/s7"]
        got = out.set_index("image_id")["p_mass"]
        assert np.allclose(got.loc[["p1/s1", "p1/image:d", "p2/s1", "p3/s7"]], want)
        labels = out.set_index("image_id")["y_mass"]
        assert labels["p1/s1"] == 1 and labels["p2/s1"] == 1 and np.isnan(labels["p3/s7"])
        assert info["studies"] == 4 and info["images"] == 6 and info["studies_with_several_images"] == 2
        assert info["label_conflicts"] == {"mass": 1} and info["largest_study"] == 2
    assert list(study_keys(np.array(["p"]), np.array([""], dtype=object), np.array(["x"]))) == ["p/image:x"]
    with pytest.raises(InputError, match="did you mean 'max'"):
        aggregate_studies(frame(), STUDIES, "maxx")


def test_study_level_metrics_equal_the_metrics_of_the_aggregated_frame(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    df = pd.DataFrame({"image_id": [f"i{k:03d}" for k in range(n)],
                       "patient_id": [f"p{k // 4}" for k in range(n)], "p_mass": rng.random(n),
                       "y_mass": np.repeat(rng.random(n // 2) < 0.4, 2).astype(float)})
    index = pd.DataFrame({"image_id": df["image_id"], "patient_id": df["patient_id"],
                          "study_id": [f"s{k // 2}" for k in range(n)], "split": "test"})
    meta = tmp_path / "index.parquet"
    index.to_parquet(meta)
    doc = study_level_metrics(df, None, meta, "mean", threshold_from="test", n_resamples=30, seed=1)
    agg, _ = aggregate_studies(df, index["study_id"].to_numpy(dtype=object), "mean")
    want = evaluate_predictions(agg, None, threshold_from="test", n_resamples=30, seed=1)
    assert doc["level"] == "study" and doc["n_images"] == n // 2 == doc["studies"]["studies"]
    assert doc["per_finding"]["mass"]["metrics"]["auroc"] == want["per_finding"]["mass"]["metrics"]["auroc"]
    with pytest.raises(InputError, match="no index"):
        study_level_metrics(df, None, None, "max", threshold_from="test", n_resamples=0)


def test_evaluate_writes_study_metrics_beside_metrics_and_removes_them_when_not_asked(tiny_run, tmp_path,
                                                                                    cli_runner):
    from cxrbench.evaluate.run_eval import evaluate_run

    source, cache = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml"):
        shutil.copy(source / name, run / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_run(run, "test", n_resamples=20, subgroups=False, calibration=False,
                              predict_kwargs={"cache_dir": cache, "device": "cpu"}, study_level="max")
    path = run / "eval" / "test" / STUDY_METRICS_FILE
    doc = json.loads(path.read_text())
    # the tiny cache has no study ids: every image is its own study, the metrics are the image metrics
    assert doc["studies"]["studies"] == result["n_images"] and doc["aggregation"] == "max"
    macro = result["macro"]["metrics"]["auroc"]["value"]
    assert doc["macro"]["metrics"]["auroc"]["value"] == pytest.approx(macro)
    assert doc["predictions_sha256"] == result["predictions_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate_run(run, "test", n_resamples=20, subgroups=False, calibration=False,
                     predict_kwargs={"cache_dir": cache, "device": "cpu"})
    assert not path.exists()  # it described an evaluation asked for before
    result = cli_runner.invoke(app, ["evaluate", str(run), "--cache", str(cache), "--bootstrap", "20",
                                     "--device", "cpu", "--study-level", "mean"])
    assert result.exit_code == 0, result.output
    assert "study level (mean of image scores)" in result.output and path.is_file()
    result = cli_runner.invoke(app, ["evaluate", str(run), "--study-level", "median"])
    assert result.exit_code == 2 and "--study-level" in result.stderr
