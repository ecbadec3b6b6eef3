"""cxrbench.evaluate and `cxrbench evaluate`: metrics.json content, threshold policies, run folders."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate import predictions, run_eval, scoring
from cxrbench.stats.metrics import UndefinedMetricWarning

FINDINGS = ("cardiomegaly", "pleural_effusion", "hernia")


def make_preds(seed: int = 0, n: int = 200, prefix: str = "t", signal: float = 1.5) -> pd.DataFrame:
    """Contract-4 predictions; ``hernia`` has no positive (not estimable), some labels unknown."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in range(n)],
                       "patient_id": [f"{prefix}p{i // 2:04d}" for i in range(n)]})
    for k, f in enumerate(FINDINGS):
        y = (rng.random(n) < (0.3 if f != "hernia" else 0.0)).astype(float)
        y[rng.random(n) < 0.05] = np.nan
        df[f"p_{f}"] = 1 / (1 + np.exp(-(signal * np.nan_to_num(y) + rng.normal(size=n) - 0.5 * k)))
        df[f"y_{f}"] = y
    return df


def evaluate_quietly(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return scoring.evaluate_predictions(*args, **kwargs)


def known(df, f):
    m = df[f"y_{f}"].notna().to_numpy()
    return df[f"y_{f}"].to_numpy()[m].astype(int), df[f"p_{f}"].to_numpy()[m]


def test_metrics_values_cis_and_not_estimable_finding():
    test, val = make_preds(0), make_preds(1, prefix="v")
    with pytest.warns(UndefinedMetricWarning, match="hernia: not estimable"):
        out = scoring.evaluate_predictions(test, val, n_resamples=200, seed=3)
    assert out["findings"] == list(FINDINGS) and out["n_images"] == 200 and out["n_patients"] == 100
    card = out["per_finding"]["cardiomegaly"]
    yk, sk = known(test, "cardiomegaly")
    auc = card["metrics"]["auroc"]
    assert abs(auc["value"] - skm.roc_auc_score(yk, sk)) < 1e-12
    assert auc["ci_low"] < auc["value"] < auc["ci_high"] and auc["n_resamples_used"] == 200
    assert abs(card["metrics"]["average_precision"]["value"] - skm.average_precision_score(yk, sk)) < 1e-12
    assert card["n"] == len(yk) and card["n_positive"] == int(yk.sum())
    assert card["n_unknown"] == int(test["y_cardiomegaly"].isna().sum())
    lo, hi = card["auroc_delong_ci"]
    assert lo < auc["value"] < hi
    hernia = out["per_finding"]["hernia"]
    assert not hernia["estimable"] and hernia["not_estimable_reason"] == "no positives"
    assert out["not_estimable"] == {"hernia": "no positives"}
    assert hernia["metrics"]["auroc"]["value"] != hernia["metrics"]["auroc"]["value"]  # NaN
    macro = out["macro"]
    assert macro["findings"] == ["cardiomegaly", "pleural_effusion"]
    expected = np.mean([out["per_finding"][f]["metrics"]["auroc"]["value"] for f in macro["findings"]])
    assert macro["metrics"]["auroc"]["value"] == pytest.approx(expected)
    assert out["bootstrap"]["seed"] == 3 and out["bootstrap"]["n_resamples"] == 200


def test_val_threshold_is_youden_on_val_and_applied_to_test():
    test, val = make_preds(0), make_preds(1, prefix="v")
    out = evaluate_quietly(test, val, n_resamples=50)
    assert out["threshold_policy"]["source"] == "val"
    yv, sv = known(val, "cardiomegaly")
    fpr, tpr, thr = skm.roc_curve(yv, sv)
    t = thr[np.argmax(tpr - fpr)]
    entry = out["per_finding"]["cardiomegaly"]
    assert entry["threshold"] == t and entry["threshold_source"] == "val"
    yk, sk = known(test, "cardiomegaly")
    pred = (sk >= t).astype(int)
    m = entry["metrics"]
    assert m["sensitivity"]["value"] == pytest.approx(skm.recall_score(yk, pred))
    assert m["specificity"]["value"] == pytest.approx(skm.recall_score(yk, pred, pos_label=0))
    assert m["f1"]["value"] == pytest.approx(skm.f1_score(yk, pred))
    assert m["ppv"]["value"] == pytest.approx(skm.precision_score(yk, pred))


def test_test_threshold_is_labelled_as_reference_reproduction():
    test = make_preds(0)
    out = evaluate_quietly(test, None, n_resamples=50, threshold_from="test")
    assert out["threshold_policy"]["source"] == "test"
    assert "REFERENCE-STUDY REPRODUCTION" in out["threshold_policy"]["description"]
    entry = out["per_finding"]["cardiomegaly"]
    assert entry["threshold_source"] == "test"
    yk, sk = known(test, "cardiomegaly")
    fpr, tpr, thr = skm.roc_curve(yk, sk)
    assert entry["threshold"] == thr[np.argmax(tpr - fpr)]
    assert entry["threshold_bootstrap"]["n_resamples_used"] == 50


def test_fixed_thresholds_and_their_errors():
    test = make_preds(0)
    out = evaluate_quietly(test, None, n_resamples=20, thresholds={"*": 0.5, "cardiomegaly": 0.3})
    assert out["threshold_policy"]["source"] == "fixed"
    assert out["per_finding"]["cardiomegaly"]["threshold"] == 0.3
    assert out["per_finding"]["pleural_effusion"]["threshold"] == 0.5
    with pytest.raises(InputError, match="no threshold for finding"):
        scoring.evaluate_predictions(test, thresholds={"cardiomegaly": 0.3})
    with pytest.raises(InputError, match="did you mean 'cardiomegaly'"):
        scoring.evaluate_predictions(test, thresholds={"cardiomegally": 0.3, "*": 0.5})
    with pytest.raises(InputError, match="conflicts"):
        scoring.evaluate_predictions(test, thresholds=0.5, threshold_from="val")
    with pytest.raises(InputError, match="no validation predictions"):
        scoring.evaluate_predictions(test, None)


def test_row_order_does_not_change_anything():
    test, val = make_preds(0), make_preds(1, prefix="v")
    a = evaluate_quietly(test, val, n_resamples=100, seed=5, cluster="patient")
    shuffled = test.sample(frac=1.0, random_state=1)
    b = evaluate_quietly(shuffled, val, n_resamples=100, seed=5, cluster="patient")
    assert json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    assert a["bootstrap"]["cluster"] == "patient" and a["bootstrap"]["n_units"] == 100


def test_no_bootstrap_gives_point_estimates_only():
    out = evaluate_quietly(make_preds(0), None, n_resamples=0, threshold_from="test")
    assert out["bootstrap"] is None
    auc = out["per_finding"]["cardiomegaly"]["metrics"]["auroc"]
    assert 0.5 < auc["value"] < 1 and np.isnan(auc["ci_low"])


@pytest.mark.parametrize("mutate,message", [
    (lambda df: df.iloc[:0], "split is empty"),
    (lambda df: df.drop(columns=["y_hernia"]), "p_hernia has no y_hernia"),
    (lambda df: df.drop(columns=["patient_id"]), "missing required column"),
    (lambda df: df.assign(image_id=["t0000"] * len(df)), "appears more than once"),
    (lambda df: df.assign(y_cardiomegaly=2.0), "label 2.0 at image 't0000'"),
    (lambda df: df.assign(p_cardiomegaly=np.r_[np.nan, df["p_cardiomegaly"].to_numpy()[1:]])
     .assign(y_cardiomegaly=1.0), "score nan at image 't0000'"),
    (lambda df: df.assign(p_cardiomegaly=np.r_[np.inf, df["p_cardiomegaly"].to_numpy()[1:]])
     .assign(y_cardiomegaly=1.0), "is not finite"),
    (lambda df: df.assign(p_hernia=["x"] + [0.1] * (len(df) - 1)), "non-numeric value 'x'"),
    (lambda df: df.assign(patient_id=[None] + ["p"] * (len(df) - 1)), "'patient_id' is empty at row 1"),
    (lambda df: df[["image_id", "patient_id"]], "no finding columns"),
])
def test_bad_predictions_give_one_clear_error(mutate, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        scoring.evaluate_predictions(mutate(make_preds(0)), threshold_from="test", n_resamples=10)


class FakePredictor:
    """Stands in for cxrbench.inference.predict_split; counts its calls."""

    def __init__(self, bad: bool = False):
        self.calls: list[str] = []
        self.bad = bad

    def __call__(self, run_dir, split, **kwargs):
        self.calls.append(split)
        df = make_preds(0 if split == "test" else 1, prefix=split[0])
        if self.bad:
            df["p_cardiomegaly"] = np.nan
        return df


def make_run(tmp_path, weights: bytes = b"weights-1"):
    run = tmp_path / "run"
    run.mkdir()
    (run / predictions.WEIGHTS_FILE).write_bytes(weights)
    return run


def test_evaluate_run_predicts_writes_and_reuses(tmp_path):
    run = make_run(tmp_path)
    fake = FakePredictor()
    out = evaluate_quietly_run(run, fake)
    assert sorted(fake.calls) == ["test", "val"]
    metrics_path = run / "eval" / "test" / "metrics.json"
    stored = json.loads(metrics_path.read_text(), parse_constant=_no_constants)
    assert stored["split"] == "test" and stored["format"] == scoring.METRICS_FORMAT
    assert stored["per_finding"]["hernia"]["metrics"]["auroc"]["value"] is None  # NaN -> null
    assert stored["predictions_sha256"] == out["predictions_sha256"]
    assert predictions.predictions_meta(run / "eval" / "test" / "predictions.parquet")["weights_sha256"]
    assert (run / "eval" / "val" / "predictions.parquet").is_file()
    evaluate_quietly_run(run, fake)
    assert len(fake.calls) == 2  # up to date: reused
    (run / predictions.WEIGHTS_FILE).write_bytes(b"weights-2")
    evaluate_quietly_run(run, fake)
    assert len(fake.calls) == 4  # weights changed: predicted again


def test_failed_evaluation_leaves_earlier_files_untouched(tmp_path):
    run = make_run(tmp_path)
    evaluate_quietly_run(run, FakePredictor())
    folder = run / "eval" / "test"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (run / predictions.WEIGHTS_FILE).write_bytes(b"weights-2")
    with pytest.raises(InputError, match="not finite"):
        evaluate_quietly_run(run, FakePredictor(bad=True))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_run_without_weights_uses_foreign_predictions(tmp_path):
    run = tmp_path / "other_tool"
    predictions.write_predictions(make_preds(0), run / "eval" / "test" / "predictions.parquet")
    with pytest.warns(UndefinedMetricWarning, match="hernia"):
        out = run_eval.evaluate_run(run, "test", n_resamples=10, threshold_from="test",
                                    predict_fn=FakePredictor())
    assert out["per_finding"]["cardiomegaly"]["estimable"]
    with pytest.raises(InputError, match="no predictions for split 'val' and no trained weights"):
        run_eval.evaluate_run(run, "test", n_resamples=10, predict_fn=FakePredictor(),
                              on_conflict="overwrite")


def test_metrics_computed_with_other_settings_are_not_silently_replaced(tmp_path):
    run = tmp_path / "other_tool"
    predictions.write_predictions(make_preds(0), run / "eval" / "test" / "predictions.parquet")
    path = run / "eval" / "test" / "metrics.json"
    kw = {"threshold_from": "test", "predict_fn": FakePredictor()}
    with pytest.warns(UndefinedMetricWarning):
        first = run_eval.evaluate_run(run, "test", n_resamples=10, **kw)
    assert first["bootstrap"]["cluster"] == "patient" and first["written"]  # the default unit, as in study
    before = path.read_bytes()
    with pytest.warns(UndefinedMetricWarning):
        run_eval.evaluate_run(run, "test", n_resamples=10, **kw)  # same settings: replaced freely
    # from Python the fix names the keyword arguments (the CLI's flags: test_cli_evaluate_keeps_...)
    for change, text in [({"seed": 3}, "seed 0 -> 3.*seed=0"),
                         ({"cluster": "image"}, "cluster patient -> image.*cluster='patient'"),
                         ({"n_resamples": 20}, "bootstrap 10 -> 20.*n_resamples=10"),
                         ({"ci_level": 0.9}, "ci 0.95 -> 0.9.*ci_level=0.95")]:
        args = {"n_resamples": 10, **change}
        with pytest.raises(InputError, match=f"metrics.json: it holds metrics computed with other settings "
                                             f"\\({text}.*on_conflict=\"overwrite\""):
            run_eval.evaluate_run(run, "test", **args, **kw)
    with pytest.raises(InputError, match="thresholds test -> fixed"):
        run_eval.evaluate_run(run, "test", n_resamples=10, thresholds=0.5, predict_fn=FakePredictor())
    assert json.loads(path.read_bytes())["bootstrap"]["seed"] == json.loads(before)["bootstrap"]["seed"]
    with pytest.warns(UndefinedMetricWarning):
        kept = run_eval.evaluate_run(run, "test", n_resamples=10, seed=3, on_conflict="keep", **kw)
    assert not kept["written"] and kept["bootstrap"]["seed"] == 3
    assert json.loads(path.read_bytes())["bootstrap"]["seed"] == 0
    with pytest.warns(UndefinedMetricWarning):
        run_eval.evaluate_run(run, "test", n_resamples=10, seed=3, on_conflict="overwrite", **kw)
    assert json.loads(path.read_bytes())["bootstrap"]["seed"] == 3
    with pytest.warns(UndefinedMetricWarning):  # fixed thresholds are part of the settings
        run_eval.evaluate_run(run, "test", n_resamples=0, thresholds=0.5, predict_fn=FakePredictor(),
                              on_conflict="overwrite")
    with pytest.raises(InputError, match="fixed .*'\\*': 0.5.* -> .*'\\*': 0.3"):
        run_eval.evaluate_run(run, "test", n_resamples=0, thresholds=0.3, predict_fn=FakePredictor())
    with pytest.warns(UndefinedMetricWarning):  # no resamples: seed and cluster do not matter
        run_eval.evaluate_run(run, "test", n_resamples=0, seed=5, cluster="image", thresholds=0.5,
                              predict_fn=FakePredictor())


def test_default_predictor_is_inference_predict_split(tmp_path, monkeypatch):
    inference = pytest.importorskip("cxrbench.evaluate.inference")
    fake = FakePredictor()
    monkeypatch.setattr(inference, "predict_split", fake)
    evaluate_quietly_run(make_run(tmp_path), None)
    assert sorted(fake.calls) == ["test", "val"]


def evaluate_quietly_run(run, predict_fn, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return run_eval.evaluate_run(run, "test", n_resamples=30, predict_fn=predict_fn, **kwargs)


def _no_constants(name):
    raise AssertionError(f"metrics.json contains {name}, which is not valid JSON")


def write_run(tmp_path, name="run"):
    run = tmp_path / name
    predictions.write_predictions(make_preds(0), run / "eval" / "test" / "predictions.parquet")
    predictions.write_predictions(make_preds(1, prefix="v"), run / "eval" / "val" / "predictions.parquet")
    return run


def test_cli_evaluate_writes_and_prints(tmp_path, cli_runner):
    run = write_run(tmp_path)
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "50", "--seed", "4",
                                     "--cluster", "patient"])
    assert result.exit_code == 0, result.output
    assert "cardiomegaly" in result.stdout and "AUROC" in result.stdout and "macro" in result.stdout
    assert "hernia: not estimable" in result.stderr
    data = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert data["bootstrap"]["seed"] == 4 and data["bootstrap"]["cluster"] == "patient"


def test_cli_evaluate_json_to_stdout_and_fixed_thresholds(tmp_path, cli_runner):
    run = write_run(tmp_path)
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "--threshold", "0.5",
                                     "--threshold", "cardiomegaly=0.25", "--out-json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["per_finding"]["cardiomegaly"]["threshold"] == 0.25
    assert data["threshold_policy"]["source"] == "fixed"


def test_cli_evaluate_keeps_metrics_of_other_settings(tmp_path, cli_runner):
    run = write_run(tmp_path)
    path = run / "eval" / "test" / "metrics.json"
    assert cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "-q"]).exit_code == 0
    before = path.read_bytes()
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "--cluster", "image"])
    assert result.exit_code == 2 and "cluster patient -> image" in result.stderr
    assert "--cluster patient" in result.stderr and "--overwrite" in result.stderr  # the CLI's spelling
    assert "on_conflict" not in result.stderr
    other = tmp_path / "image-cluster.json"
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "--cluster", "image",
                                     "--out-json", str(other)])
    assert result.exit_code == 0 and f"kept {path}" in result.stderr and "wrote" not in result.stdout
    assert path.read_bytes() == before and json.loads(other.read_text())["bootstrap"]["cluster"] == "image"
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "20", "--cluster", "image",
                                     "--overwrite", "-q"])
    assert result.exit_code == 0 and json.loads(path.read_text())["bootstrap"]["cluster"] == "image"


@pytest.mark.parametrize("args,message", [
    (["--threshold", "abc"], "--threshold got 'abc'"),
    (["--threshold-from", "tset"], "did you mean 'test'"),
    (["--cluster", "patients"], "did you mean 'patient'"),
    (["--split", "tests"], "did you mean 'test'"),
])
def test_cli_evaluate_bad_options_exit_2_without_traceback(tmp_path, cli_runner, args, message):
    run = write_run(tmp_path)
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "10", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output + result.stderr
    assert not (run / "eval" / "test" / "metrics.json").exists()


def test_cli_evaluate_missing_run(tmp_path, cli_runner):
    result = cli_runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "run folder not found" in result.stderr


def test_one_class_resamples_are_one_summary_line_per_evaluation():
    """A small split where several findings have few positives: one warning for the evaluation, naming
    each finding with its count of excluded resamples (the counts stay in each finding's entry)."""
    df = make_preds(3, n=24)
    for f, k in (("cardiomegaly", 1), ("pleural_effusion", 2)):  # 1 and 2 positives of 24
        df[f"y_{f}"] = [1.0] * k + [0.0] * (len(df) - k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = scoring.evaluate_predictions(df, None, n_resamples=200, threshold_from="test")
    lines = [str(w.message) for w in caught if "only one class" in str(w.message)]
    counted = {f: e.get("resamples_one_class", 0) for f, e in out["per_finding"].items()}
    affected = [f for f, n in counted.items() if n]
    assert len(affected) >= 2, counted  # the case worth summarising
    assert len(lines) == 1, lines
    for f in affected:
        assert f"{f} {counted[f]}" in lines[0]
