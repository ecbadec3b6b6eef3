"""cxrbench.evaluate.shortcut and `cxrbench shortcut`: a metadata-only model, written as Contract-4
predictions that evaluate/compare read, and the check that an image model beats it."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression

from cxrbench.cache.build import write_cache
from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import SHORTCUT_MODEL, metrics_path, predictions_path, subgroups_path
from cxrbench.evaluate import predictions
from cxrbench.evaluate.shortcut import (
    fit_shortcut,
    shortcut_check,
    shortcut_predictions,
    shortcut_warnings,
    write_shortcut,
)

FINDINGS = ["covid", "edema"]


def write_view_cache(out, n: int = 600, seed: int = 0):
    """A cache where covid follows the view (most positives AP), edema follows nothing but noise."""
    rng = np.random.default_rng(seed)
    view = rng.choice(["AP", "PA"], n)
    covid = (rng.random(n) < np.where(view == "AP", 0.7, 0.1)).astype(np.float32)
    edema = (rng.random(n) < 0.3).astype(np.float32)
    edema[rng.random(n) < 0.05] = np.nan
    split = np.array(["train"] * n, dtype=object)
    split[int(0.6 * n):int(0.8 * n)] = "val"
    split[int(0.8 * n):] = "test"
    age = rng.uniform(20, 90, n)
    age[rng.random(n) < 0.1] = np.nan
    df = pd.DataFrame({"image_id": [f"i{i:04d}" for i in range(n)],
                       "patient_id": [f"p{i:04d}" for i in range(n)],
                       "study_id": None, "path": [f"img/{i}.png" for i in range(n)], "view": view,
                       "split": split, "dataset": "covid", "sex": rng.choice(["F", "M"], n), "age": age,
                       "covid": covid, "edema": edema})
    write_cache(out, rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), df, FINDINGS)
    return out, df


def test_design_matrix_and_fit_equal_sklearn_on_the_same_features():
    meta = pd.DataFrame({"view": ["AP", "PA", "AP", "PA", None], "sex": ["F", "F", "M", "M", "F"],
                         "dataset": ["a"] * 5, "age": [30.0, 50.0, np.nan, 70.0, 40.0]})
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, np.nan]], dtype=float)
    model = fit_shortcut(meta, y, FINDINGS)
    assert model.features == ["view", "sex", "age"] and "dataset" in model.notes  # constant: dropped
    assert model.categories["view"] == ["AP", "PA", "unknown"]
    x = model.design(meta)
    mean, std = model.numeric["age"]
    z = (30.0 - mean) / std
    np.testing.assert_allclose(x[0], [1, 0, 0, 1, 0, z, z * z, 0])
    np.testing.assert_allclose(x[2, -3:], [0, 0, 1])  # missing age: mean (0), indicator 1
    ref = LogisticRegression(C=1.0, max_iter=2000).fit(x, y[:, 0].astype(int))
    np.testing.assert_allclose(model.predict(meta)[:, 0], ref.predict_proba(x)[:, 1], atol=1e-10)
    unseen = model.design(pd.DataFrame({"view": ["LATERAL"], "sex": ["F"], "dataset": ["b"], "age": [30.0]}))
    assert unseen[0, :3].sum() == 0  # a level not seen in train: all-zero one-hot


def test_predictions_are_contract_4_and_learn_the_view(tmp_path):
    cache, df = write_view_cache(tmp_path / "cache")
    frames, model = shortcut_predictions(cache)
    assert set(frames) == {"val", "test"} and model.features == ["view", "sex", "age"]
    test = frames["test"]
    ps = predictions.PredictionSet.from_frame(test)
    assert ps.findings == FINDINGS and ps.n == int((df["split"] == "test").sum())
    truth = df.set_index("image_id").loc[test["image_id"]]
    np.testing.assert_array_equal(test["y_covid"], truth["covid"])
    auc = skm.roc_auc_score(test["y_covid"], test["p_covid"])
    assert auc > 0.75  # the view alone predicts covid
    known = test["y_edema"].notna()
    assert abs(skm.roc_auc_score(test["y_edema"][known], test["p_edema"][known]) - 0.5) < 0.15
    index_frames, _ = shortcut_predictions(cache / "index.parquet", findings=["covid"], features=["view"])
    np.testing.assert_allclose(sorted(index_frames["test"]["p_covid"]),
                               sorted(shortcut_predictions(cache, ["covid"], ["view"])[0]["test"]["p_covid"]))
    with pytest.raises(InputError, match="not in the index"):
        shortcut_predictions(cache, findings=["covidd"])
    with pytest.raises(InputError, match="did you mean 'view'"):
        shortcut_predictions(cache, features=["veiw"])


def test_written_folder_is_evaluated_and_compared_like_a_run(tmp_path):
    from cxrbench.evaluate.compare import compare_predictions
    from cxrbench.evaluate.run_eval import evaluate_run

    cache, _ = write_view_cache(tmp_path / "cache")
    out = tmp_path / "shortcut"
    paths = write_shortcut(cache, out)
    assert paths["test"] == predictions_path(out, "test") and (out / SHORTCUT_MODEL).is_file()
    doc = json.loads((out / SHORTCUT_MODEL).read_text())
    assert doc["format"] == "cxrbench.shortcut/1" and doc["features"] == ["view", "sex", "age"]
    metrics = evaluate_run(out, "test", n_resamples=20)
    assert metrics["per_finding"]["covid"]["metrics"]["auroc"]["value"] > 0.75
    assert metrics_path(out, "test").is_file()
    sc = predictions.read_predictions(paths["test"])
    table = compare_predictions({"a": sc, "b": sc.assign(p_covid=0.5)}, n_resamples=20)
    assert set(table["finding"]) == {"covid", "edema", "mean"}
    write_shortcut(cache, out)  # a previous shortcut folder: replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="not a shortcut-baseline folder"):
        write_shortcut(cache, tmp_path / "other")


def test_check_warns_when_an_image_model_does_not_beat_the_shortcut(tmp_path):
    cache, df = write_view_cache(tmp_path / "cache")
    shortcut = shortcut_predictions(cache)[0]["test"]
    rng = np.random.default_rng(1)
    copycat = shortcut.assign(p_covid=shortcut["p_covid"] + rng.normal(0, 0.01, len(shortcut)))
    good = shortcut.assign(p_covid=shortcut["y_covid"] * 0.6 + rng.random(len(shortcut)) * 0.5,
                           p_edema=shortcut["y_edema"].fillna(0) * 0.6 + rng.random(len(shortcut)) * 0.5)
    bad = shortcut_check(copycat, shortcut, name="copycat", n_resamples=200)
    assert set(bad["model_b"]) == {"shortcut"} and (bad["alternative"] == "greater").all()
    covid = bad.set_index("finding").loc["covid"]
    assert not covid["beats_shortcut"]
    assert "copycat does not beat the metadata-only shortcut on covid" in covid["warning"]
    assert len(shortcut_warnings(bad)) == 3
    ok = shortcut_check(good, shortcut, name="good", n_resamples=200)
    assert ok["beats_shortcut"].all() and shortcut_warnings(ok) == []
    with pytest.raises(InputError, match="cannot be called 'shortcut'"):
        shortcut_check(good, shortcut, name="shortcut")


def test_cli_shortcut_writes_evaluates_and_checks(tmp_path, cli_runner):
    cache, _ = write_view_cache(tmp_path / "cache")
    shortcut = shortcut_predictions(cache)[0]["test"]
    run = tmp_path / "image-run"
    predictions.write_predictions(shortcut.assign(p_covid=shortcut["p_covid"] * 0.9),
                                  predictions_path(run, "test"))
    out = tmp_path / "sc"
    result = cli_runner.invoke(app, ["shortcut", str(cache), "--out", str(out), "--bootstrap", "50",
                                     "--against", str(run)])
    assert result.exit_code == 0, result.output
    assert "covid" in result.stdout and "beats the shortcut on 0 of 3" in result.stdout
    assert "warning: image-run does not beat the metadata-only shortcut on covid" in result.stderr
    assert subgroups_path(out, "test").is_file()  # subgroups from the same metadata
    result = cli_runner.invoke(app, ["shortcut", str(cache), "--out", str(out), "--features", "viewx"])
    assert result.exit_code == 2 and "did you mean 'view'" in result.stderr
    assert "Traceback" not in result.output
