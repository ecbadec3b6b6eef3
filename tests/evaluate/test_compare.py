"""cxrbench.compare and `cxrbench compare`: paired tests between runs, families, refusals."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate import compare as cp
from cxrbench.evaluate import predictions, run_eval, scoring
from cxrbench.stats import bootstrap as bs
from cxrbench.stats.metrics import UndefinedMetricWarning
from cxrbench.stats.significance import delong_test

FINDINGS = ("cardiomegaly", "pleural_effusion", "atelectasis", "hernia")


def labels(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"image_id": [f"img{i:04d}" for i in range(n)],
                       "patient_id": [f"pat{i // 3:04d}" for i in range(n)]})
    for f in FINDINGS:
        y = (rng.random(n) < (0.3 if f != "hernia" else 0.0)).astype(float)
        y[rng.random(n) < 0.05] = np.nan
        df[f"y_{f}"] = y
    return df


def model(truth: pd.DataFrame, signal: float, seed: int, findings=FINDINGS) -> pd.DataFrame:
    """Scores of a model of the given strength on the labelled images."""
    rng = np.random.default_rng(seed)
    df = truth[["image_id", "patient_id"] + [f"y_{f}" for f in findings]].copy()
    for f in findings:
        df[f"p_{f}"] = signal * df[f"y_{f}"].fillna(0).to_numpy() + rng.normal(size=len(df))
    return df


@pytest.fixture(scope="module")
def three_models():
    truth = labels()
    return {"dino": model(truth, 1.6, 1), "imagenet": model(truth, 1.0, 2), "mimic": model(truth, 1.2, 3)}


def test_all_pairs_rows_columns_and_values(three_models):
    out = cp.compare_predictions(three_models, n_resamples=200, seed=1)
    assert list(out.columns) == list(cp.COLUMNS)
    pairs = out[["model_a", "model_b"]].drop_duplicates().values.tolist()
    assert pairs == [["dino", "imagenet"], ["dino", "mimic"], ["imagenet", "mimic"]]
    assert len(out) == 3 * (len(FINDINGS) + 1)
    assert out.attrs["family"] == "pair" and out.attrs["bootstrap"]["seed"] == 1
    row = out[(out.model_a == "dino") & (out.model_b == "imagenet") & (out.finding == "cardiomegaly")].iloc[0]
    a, b = three_models["dino"], three_models["imagenet"]
    dl = delong_test(a["y_cardiomegaly"].to_numpy(), a["p_cardiomegaly"].to_numpy(),
                     b["p_cardiomegaly"].to_numpy())
    assert row.auroc_a == pytest.approx(dl["auroc_a"]) and row.auroc_b == pytest.approx(dl["auroc_b"])
    assert row["diff"] == pytest.approx(row.auroc_a - row.auroc_b)
    assert row.p_delong == pytest.approx(dl["p_delong"])
    assert row.diff_lo < row["diff"] < row.diff_hi
    hernia = out[out.finding == "hernia"].iloc[0]
    assert np.isnan(hernia.auroc_a) and "not estimable: no positives" in hernia.note


def test_mean_row_and_bh_family_per_pair(three_models):
    out = cp.compare_predictions(three_models, n_resamples=200, seed=1)
    for _, rows in out.groupby(["model_a", "model_b"]):
        tests = rows[rows.finding != "mean"]
        ok = tests.p_bootstrap.notna()
        np.testing.assert_allclose(tests.p_adjusted[ok], sps.false_discovery_control(tests.p_bootstrap[ok]))
        np.testing.assert_allclose(tests.p_delong_adjusted[ok],
                                   sps.false_discovery_control(tests.p_delong[ok]))
        mean = rows[rows.finding == "mean"].iloc[0]
        assert mean.auroc_a == pytest.approx(tests.auroc_a[ok].mean())
        assert np.isnan(mean.p_adjusted) and np.isnan(mean.p_delong)


def test_fdr_none_keeps_the_raw_p_values(three_models):
    table = cp.compare_predictions(three_models, n_resamples=50, fdr="none")
    assert table["p_adjusted"].equals(table["p_bootstrap"])
    assert table["p_delong_adjusted"].equals(table["p_delong"])
    with pytest.raises(InputError, match="^fdr got 'holm'"):  # the keyword argument, from Python
        cp.compare_predictions(three_models, n_resamples=50, fdr="holm")


def test_family_all_adjusts_across_pairs(three_models):
    out = cp.compare_predictions(three_models, n_resamples=100, family="all")
    tests = out[(out.finding != "mean") & out.p_bootstrap.notna()]
    np.testing.assert_allclose(tests.p_adjusted, sps.false_discovery_control(tests.p_bootstrap))
    assert (out.family == "all").all()


def test_reference_orientation_and_one_sided(three_models):
    two = cp.compare_predictions(three_models, reference="imagenet", n_resamples=300, seed=2)
    assert two[["model_a", "model_b"]].drop_duplicates().values.tolist() == [["dino", "imagenet"],
                                                                            ["mimic", "imagenet"]]
    one = cp.compare_predictions(three_models, reference="imagenet", n_resamples=300, seed=2,
                                 alternative="greater")
    np.testing.assert_array_equal(two["diff_lo"], one["diff_lo"])  # same resamples, same CI
    r2 = two[(two.model_a == "dino") & (two.finding == "mean")].iloc[0]
    r1 = one[(one.model_a == "dino") & (one.finding == "mean")].iloc[0]
    assert r2["diff"] > 0 and r1.p_bootstrap <= r2.p_bootstrap
    assert r2.p_bootstrap == pytest.approx(min(1.0, 2 * r1.p_bootstrap))
    with pytest.raises(InputError, match="did you mean 'imagenet'"):
        cp.compare_predictions(three_models, reference="imagenett", n_resamples=10)


def test_paired_resamples_are_those_of_evaluate(three_models):
    """compare's bootstrap of each model uses the resamples evaluate stored: identical per-model CIs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        m = scoring.evaluate_predictions(three_models["dino"], n_resamples=150, seed=9, cluster="patient",
                                    threshold_from="test")
    ps = predictions.PredictionSet.from_frame(three_models["dino"])
    boot = bs.bootstrap_auroc(ps.labels, ps.scores, ps.resamples(150, 9, "patient"))
    j = ps.column("cardiomegaly")
    summary = bs.summarize(boot[:, j], 0.0)
    stored = m["per_finding"]["cardiomegaly"]["metrics"]["auroc"]
    assert (summary["ci_low"], summary["ci_high"]) == (stored["ci_low"], stored["ci_high"])
    # a model compared with a shuffled copy of itself: paired, so every resampled difference is 0
    shuffled = three_models["dino"].sample(frac=1.0, random_state=0)
    same = cp.compare_predictions({"a": three_models["dino"], "b": shuffled}, n_resamples=50)
    est = same[same.p_bootstrap.notna()]
    assert (est["diff"] == 0).all() and (est.diff_lo == 0).all() and (est.p_bootstrap == 1).all()


def test_different_finding_sets_use_the_common_ones():
    truth = labels()
    preds = {"all": model(truth, 1.5, 1), "subset": model(truth, 1.0, 2, FINDINGS[:2])}
    out = cp.compare_predictions(preds, n_resamples=50)
    assert out.finding.tolist() == ["cardiomegaly", "pleural_effusion", "mean"]
    with pytest.raises(InputError, match="share no finding"):
        disjoint = {"a": model(truth, 1, 1, FINDINGS[:1]), "b": model(truth, 1, 2, FINDINGS[1:2])}
        cp.compare_predictions(disjoint, n_resamples=10)


def test_refuses_different_images_labels_and_patients():
    truth = labels()
    a = model(truth, 1.5, 1)
    with pytest.raises(InputError, match=r"2 image\(s\) only in 'a' \(e.g. img0000, img0001"):
        cp.compare_predictions({"a": a, "b": model(truth, 1.0, 2).iloc[2:]}, n_resamples=10)
    flipped = model(truth, 1.0, 2)
    old = flipped.loc[5, "y_atelectasis"]
    flipped.loc[5, "y_atelectasis"] = 1.0 - old if old in (0, 1) else 1.0
    with pytest.raises(InputError, match="labels of finding 'atelectasis' differ at image 'img0005'"):
        cp.compare_predictions({"a": a, "b": flipped}, n_resamples=10)
    moved = model(truth, 1.0, 2).assign(patient_id="x")
    with pytest.raises(InputError, match="has patient"):
        cp.compare_predictions({"a": a, "b": moved}, n_resamples=10)
    with pytest.raises(InputError, match="at least two runs"):
        cp.compare_predictions({"a": a}, n_resamples=10)


def write_runs(tmp_path, three_models, seeds=(0, 0, 0)):
    runs = []
    for (name, df), seed in zip(three_models.items(), seeds, strict=True):
        run = tmp_path / name
        predictions.write_predictions(df, run / "eval" / "test" / "predictions.parquet")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            run_eval.evaluate_run(run, "test", n_resamples=40, seed=seed, threshold_from="test")
        runs.append(run)
    return runs


def test_cli_compare_table_csv_and_json(tmp_path, cli_runner, three_models):
    runs = write_runs(tmp_path, three_models, seeds=(7, 7, 7))
    csv = tmp_path / "out" / "cmp.csv"
    result = cli_runner.invoke(app, ["compare", *map(str, runs), "--reference", str(runs[1]),
                                     "--out", str(csv)])
    assert result.exit_code == 0, result.output
    assert "A = dino  vs  B = imagenet" in result.stdout and "p DeLong" in result.stdout
    table = pd.read_csv(csv)
    for col in ("finding", "auroc_a", "auroc_b", "diff", "diff_lo", "diff_hi", "p_bootstrap", "p_delong",
                "p_adjusted"):
        assert col in table.columns
    assert (table.seed == 7).all() and (table.n_resamples == 40).all()  # the stored settings
    assert table.finding.tolist().count("mean") == 2
    out_json = tmp_path / "cmp.json"
    result = cli_runner.invoke(app, ["compare", *map(str, runs[:2]), "--out", str(out_json), "--seed", "3",
                                     "--bootstrap", "30", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(out_json.read_text())
    assert data["settings"]["bootstrap"]["seed"] == 3 and len(data["rows"]) == len(FINDINGS) + 1


def test_cli_compare_refuses_conflicting_stored_seeds(tmp_path, cli_runner, three_models):
    runs = write_runs(tmp_path, three_models, seeds=(1, 2, 1))
    result = cli_runner.invoke(app, ["compare", *map(str, runs)])
    assert result.exit_code == 2
    assert "different bootstrap seed" in result.stderr and "--seed" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    result = cli_runner.invoke(app, ["compare", *map(str, runs), "--seed", "5", "-q"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("extra,message", [
    (["--out", "x.txt"], "unknown extension"),
    (["--reference", "nobody"], "not one of the compared runs"),
    (["--alternative", "less"], "--alternative got 'less'"),
    (["--split", "val"], "predictions file not found"),
])
def test_cli_compare_bad_input(tmp_path, cli_runner, three_models, extra, message):
    runs = write_runs(tmp_path, three_models)
    result = cli_runner.invoke(app, ["compare", *map(str, runs[:2]), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output + result.stderr


def test_cli_compare_different_images(tmp_path, cli_runner, three_models):
    a = tmp_path / "a.parquet"
    b = tmp_path / "b.parquet"
    predictions.write_predictions(three_models["dino"], a)
    predictions.write_predictions(three_models["imagenet"].iloc[:-1], b)
    result = cli_runner.invoke(app, ["compare", str(a), str(b)])
    assert result.exit_code == 2
    assert "different images" in result.stderr and "img0299" in result.stderr


def test_one_comparison_file_format_for_cli_and_study(tmp_path, three_models):
    """`cxrbench compare --out X.json` and a study's comparison.json share one format and reader."""
    table = cp.compare_predictions(dict(list(three_models.items())[:2]), n_resamples=20)
    cp.write_comparison(table, tmp_path / "cli.json", runs={"a": "runs/a"})
    cp.write_comparison(table, tmp_path / "study.json", runs={"a": "runs/a"},
                        context={"dataset": "nih", "recipe": "r224", "seed": 0})
    a, b = cp.read_comparison(tmp_path / "cli.json"), cp.read_comparison(tmp_path / "study.json")
    assert a["format"] == b["format"] == cp.COMPARISON_FORMAT
    assert a["rows"] == b["rows"] and a["settings"] == b["settings"] and b["dataset"] == "nih"
    (tmp_path / "old.json").write_text(json.dumps({"dataset": "nih", "rows": a["rows"]}))  # a study before
    assert cp.read_comparison(tmp_path / "old.json")["rows"] == a["rows"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="not a cxrbench comparison file"):
        cp.read_comparison(tmp_path / "bad.json")


def test_every_row_says_what_difference_the_test_set_could_detect(three_models):
    from cxrbench.stats.power import min_detectable_difference, power_of

    out = cp.compare_predictions(three_models, reference="imagenet", n_resamples=200, seed=1)
    rows = out[(out["finding"] != cp.MEAN_ROW) & out["auroc_a"].notna()]
    assert out.loc[out["auroc_a"].isna(), "min_detectable_diff"].isna().all()  # not estimable: none
    assert rows["auroc_corr"].between(-1, 1).all() and rows["min_detectable_diff"].between(0.005, 0.5).all()
    r = rows.iloc[0]
    assert r["min_detectable_diff"] == pytest.approx(
        min_detectable_difference(r["auroc_b"], r["n_positive"], r["n_negative"], r["auroc_corr"]))
    assert power_of(r["min_detectable_diff"], r["auroc_b"], r["n_positive"], r["n_negative"],
                    r["auroc_corr"]) == pytest.approx(0.8, abs=1e-4)
    mean = out[out["finding"] == cp.MEAN_ROW]
    widest = rows.groupby("model_a")["min_detectable_diff"].max().to_numpy()
    assert (mean["min_detectable_diff"] < widest).all()
