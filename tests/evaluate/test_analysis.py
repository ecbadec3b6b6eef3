"""Subgroup and calibration results of `cxrbench evaluate` (subgroups.json, calibration.json)."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import calibration_path, metrics_path, predictions_path, subgroups_path
from cxrbench.evaluate import predictions, run_eval
from cxrbench.evaluate.analysis import (
    CalibrationOptions,
    SubgroupOptions,
    calibration_table,
    reliability_frame,
)
from cxrbench.index.schema import write_index
from cxrbench.stats import calibration as cal
from cxrbench.stats.metrics import UndefinedMetricWarning

FINDINGS = ("cardiomegaly", "no_finding")


def make_split(split: str, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions (Contract 4) and their index rows (Contract 2) with sex, age, view, dataset, site."""
    rng = np.random.default_rng(seed)
    ids = [f"{split}{i:04d}" for i in range(n)]
    pids = [f"{split}p{i // 2:04d}" for i in range(n)]
    sex = rng.choice(["F", "M"], n)
    y = (rng.random((n, 2)) < [0.3, 0.5]).astype(float)
    strength = np.where(sex == "F", 1.3, 0.5)[:, None]
    p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=(n, 2)))))
    preds = pd.DataFrame({"image_id": ids, "patient_id": pids})
    for k, f in enumerate(FINDINGS):
        preds[f"p_{f}"], preds[f"y_{f}"] = p[:, k], y[:, k]
    index = pd.DataFrame({"image_id": ids, "patient_id": pids, "study_id": None,
                          "path": [f"img/{i}.png" for i in ids], "view": rng.choice(["PA", "AP"], n),
                          "split": split, "dataset": "csv", "sex": sex, "age": rng.uniform(20, 95, n),
                          "site": rng.choice(["north", "south", "east"], n),
                          **{f: y[:, k] for k, f in enumerate(FINDINGS)}})
    return preds, index


@pytest.fixture
def foreign_run(tmp_path):
    """A folder with test and val predictions written by another tool, and the index they came from."""
    run = tmp_path / "run"
    test, test_index = make_split("test", 400, 0)
    val, val_index = make_split("val", 300, 1)
    predictions.write_predictions(test, predictions_path(run, "test"))
    predictions.write_predictions(val, predictions_path(run, "val"))
    index = tmp_path / "index.parquet"
    write_index(pd.concat([test_index, val_index], ignore_index=True), index, list(FINDINGS))
    return run, index, test


def evaluate(run, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return run_eval.evaluate_run(run, "test", n_resamples=kwargs.pop("n_resamples", 40), **kwargs)


def test_subgroups_json_equals_sklearn_per_subgroup_at_the_evaluation_thresholds(foreign_run):
    run, index, test = foreign_run
    metrics = evaluate(run, cluster="patient",
                       subgroups=SubgroupOptions(metadata=str(index), extra=("site",), age_edges=(50, 70)))
    doc = json.loads(subgroups_path(run, "test").read_text())
    # one dataset ("csv"): dataset is not offered as a subgroup
    assert doc["format"] == "cxrbench.subgroups/1" and doc["settings"]["variables"] == ["sex", "age", "view",
                                                                                         "site"]
    assert doc["settings"]["bootstrap"]["cluster"] == "patient" and doc["n_images"] == 400
    table = pd.DataFrame(doc["table"])
    assert set(table[table["variable"] == "age"]["subgroup"]) == {"<50", "50-70", ">=70"}
    meta = pd.read_parquet(index).set_index("image_id").loc[test["image_id"]]
    for f in FINDINGS:
        t = metrics["per_finding"][f]["threshold"]
        for sex in ("F", "M"):
            sel = (table["variable"] == "sex") & (table["subgroup"] == sex) & (table["finding"] == f)
            row = table[sel].iloc[0]
            m = (meta["sex"] == sex).to_numpy()
            yy, ss = test[f"y_{f}"].to_numpy()[m].astype(int), test[f"p_{f}"].to_numpy()[m]
            assert row["auroc"] == pytest.approx(skm.roc_auc_score(yy, ss), abs=1e-12)
            assert row["threshold"] == t
            assert row["sensitivity"] == pytest.approx(skm.recall_score(yy, ss >= t))
            assert row["auroc_lo"] < row["auroc"] < row["auroc_hi"]
    gap = next(g for g in doc["gaps"] if g["variable"] == "sex" and g["finding"] == "cardiomegaly"
               and g["metric"] == "auroc")
    assert gap["high_group"] == "F" and gap["gap"] > 0
    under = pd.DataFrame(doc["underdiagnosis"])
    assert set(under["variable"]) == {"sex", "age", "view", "site"}
    assert doc["predictions_sha256"] == metrics["predictions_sha256"]


def test_metrics_json_keys_do_not_change(foreign_run, tmp_path):
    run, index, _ = foreign_run
    evaluate(run, subgroups=False, calibration=False)
    plain = set(json.loads(metrics_path(run, "test").read_text()))
    evaluate(run, subgroups=SubgroupOptions(metadata=str(index)), calibration=True)
    assert set(json.loads(metrics_path(run, "test").read_text())) == plain
    assert subgroups_path(run, "test").is_file() and calibration_path(run, "test").is_file()


def test_automatic_analyses_skip_quietly_and_stale_files_are_removed(foreign_run):
    run, index, _ = foreign_run
    evaluate(run)  # no run cache, no metadata: no subgroups; probabilities: calibration
    assert not subgroups_path(run, "test").exists() and calibration_path(run, "test").is_file()
    evaluate(run, subgroups=SubgroupOptions(metadata=str(index)))
    assert subgroups_path(run, "test").is_file()
    other = run / "eval" / "test" / "notes.json"
    other.write_text("{}")
    evaluate(run, subgroups=False, calibration=False)
    assert not subgroups_path(run, "test").exists() and not calibration_path(run, "test").exists()
    assert other.is_file()  # not ours: left alone


def test_required_analyses_without_their_inputs_are_one_clear_error(foreign_run, tmp_path):
    run, index, test = foreign_run
    with pytest.raises(InputError, match="no metadata for the subgroup analysis"):
        evaluate(run, subgroups=True)
    partial = tmp_path / "partial.parquet"
    df = pd.read_parquet(index)
    write_index(df.iloc[5:], partial, list(FINDINGS))
    with pytest.raises(InputError, match="not in the metadata"):
        evaluate(run, subgroups=SubgroupOptions(metadata=str(partial)))
    with pytest.raises(InputError, match="did you mean 'site'"):
        evaluate(run, subgroups=SubgroupOptions(metadata=str(index), extra=("sites",)))
    logits = test.assign(p_cardiomegaly=test["p_cardiomegaly"] * 10 - 5)
    predictions.write_predictions(logits, predictions_path(run, "test"))
    evaluate(run, threshold_from="test")  # automatic: scores are not probabilities -> skipped
    assert not calibration_path(run, "test").exists()
    with pytest.raises(InputError, match="not probabilities"):
        evaluate(run, threshold_from="test", calibration=True)


def test_recalibration_is_fitted_on_val_and_reported_before_and_after(foreign_run):
    run, _, test = foreign_run
    evaluate(run, threshold_from="test", calibration=CalibrationOptions(n_bins=8, recalibrate="platt"))
    doc = json.loads(calibration_path(run, "test").read_text())
    val = predictions.read_predictions(predictions_path(run, "val"))
    fitted = cal.fit_recalibration("platt", val["y_cardiomegaly"].to_numpy(),
                                   val["p_cardiomegaly"].to_numpy())
    entry = doc["per_finding"]["cardiomegaly"]
    assert entry["recalibrated"]["params"] == pytest.approx(fitted.params)
    ps = predictions.PredictionSet.from_frame(test)
    j = ps.column("cardiomegaly")
    after = fitted.apply(ps.scores[:, j])
    assert entry["recalibrated"]["ece"]["value"] == pytest.approx(cal.ece(ps.labels[:, j], after, 8))
    assert entry["ece"]["value"] == pytest.approx(cal.ece(ps.labels[:, j], ps.scores[:, j], 8))
    assert entry["brier"]["ci_low"] < entry["brier"]["value"] < entry["brier"]["ci_high"]
    assert doc["settings"]["recalibration_fitted_on"] == "val"
    table = calibration_table(doc)
    assert list(table["stage"].unique()) == ["before", "after"] and len(table) == 4
    rel = reliability_frame(doc)
    assert rel.groupby(["finding", "stage"])["n"].sum().eq(400).all()


def test_cli_subgroup_and_calibration_options(foreign_run, cli_runner):
    run, index, _ = foreign_run
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "--metadata", str(index),
                                     "--subgroups", "sex,view", "--subgroup", "site", "--min-positives", "5",
                                     "--recalibrate", "isotonic", "--calibration-bins", "5"])
    assert result.exit_code == 0, result.output
    assert "subgroups (sex, view, site)" in result.stdout
    assert "calibration, ECE: cardiomegaly" in result.stdout
    doc = json.loads(subgroups_path(run, "test").read_text())
    assert doc["settings"]["min_positives"] == 5
    assert json.loads(calibration_path(run, "test").read_text())["settings"]["n_bins"] == 5
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "10"])
    assert result.exit_code == 2 and "bootstrap 20 -> 10" in result.stderr  # never silently replaced
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "10", "--overwrite"])
    assert result.exit_code == 0 and "subgroups: skipped" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--age-bands", "60,40"], "edges must increase"),
    (["--age-bands", "x"], "--age-bands got 'x'"),
    (["--subgroups", "sexx"], "did you mean 'sex'"),
    (["--recalibrate", "platts"], "did you mean 'platt'"),
])
def test_cli_bad_analysis_options_exit_2(foreign_run, cli_runner, args, message):
    run, index, _ = foreign_run
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "10", "--metadata", str(index),
                                     *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output + result.stderr


def test_dataset_is_a_subgroup_only_with_two_datasets_or_when_asked(foreign_run, tmp_path):
    run, index, _ = foreign_run
    two = tmp_path / "two.parquet"
    df = pd.read_parquet(index)
    df["dataset"] = np.where(np.arange(len(df)) % 2 == 0, "csv", "other")
    write_index(df, two, list(FINDINGS))
    evaluate(run, subgroups=SubgroupOptions(metadata=str(two)))
    assert "dataset" in json.loads(subgroups_path(run, "test").read_text())["settings"]["variables"]
    evaluate(run, subgroups=SubgroupOptions(metadata=str(index), variables=("sex", "dataset")))
    assert json.loads(subgroups_path(run, "test").read_text())["settings"]["variables"] == ["sex", "dataset"]


def test_recalibration_on_few_validation_positives_is_refused_unless_forced_and_warned(foreign_run):
    run, _, _ = foreign_run
    val = predictions.read_predictions(predictions_path(run, "val"))
    pos = np.flatnonzero(val["y_cardiomegaly"].to_numpy() == 1)
    val.loc[pos[3:], "y_cardiomegaly"] = 0.0  # 3 positives left on val
    keep = np.flatnonzero(val["y_no_finding"].to_numpy() == 1)
    val.loc[keep[20:], "y_no_finding"] = 0.0  # 20 positives: fitted with a warning
    predictions.write_predictions(val, predictions_path(run, "val"))
    with pytest.warns(UserWarning, match="isotonic recalibration refused: 3 validation positive"):
        evaluate(run, threshold_from="test", calibration=CalibrationOptions(recalibrate="isotonic"))
    doc = json.loads(calibration_path(run, "test").read_text())
    card = doc["per_finding"]["cardiomegaly"]["recalibrated"]
    assert card["params"] == {} and "refused" in card["warning"] and "refused" in card["note"]
    before = doc["per_finding"]["cardiomegaly"]["ece"]["value"]
    assert card["ece"]["value"] == pytest.approx(before)  # identity
    nf = doc["per_finding"]["no_finding"]["recalibrated"]
    assert nf["params"] and "only 20 validation positive(s)" in nf["warning"]
    assert len(doc["warnings"]) == 2 and doc["settings"]["recalibration_min"] == cal.RECALIBRATION_MIN
    with pytest.warns(UserWarning, match="fitted on only 3 validation positive"):
        evaluate(run, threshold_from="test",
                 calibration=CalibrationOptions(recalibrate="isotonic", force=True))
    doc = json.loads(calibration_path(run, "test").read_text())
    assert doc["per_finding"]["cardiomegaly"]["recalibrated"]["params"] and doc["settings"]["forced"]
    table = calibration_table(doc)
    assert table.loc[table["stage"] == "after", "warning"].str.contains("fitted on only").all()


def test_implausible_calibration_fits_are_flagged_unstable():
    assert cal.fit_instability(1.0, 0.1, 50, 50) == ""
    assert "slope 25" in cal.fit_instability(25.0, 0.1, 50, 50)
    assert "|intercept| 7" in cal.fit_instability(1.0, -7.0, 50, 50)
    assert "did not converge" in cal.fit_instability(float("nan"), float("nan"), 50, 50)
    assert "fitted on 3 positive(s)" in cal.fit_instability(1.0, 0.0, 3, 50)
