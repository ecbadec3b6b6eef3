"""cxrbench.evaluate.pooled and `cxrbench compare --arm`: statistics pooled over training seeds."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate import compare as cp
from cxrbench.evaluate import pooled as pl
from cxrbench.evaluate import predictions, run_eval, scoring
from cxrbench.stats.metrics import UndefinedMetricWarning

FINDINGS = ("cardiomegaly", "pleural_effusion", "atelectasis", "hernia")


def truth(n: int = 240, seed: int = 0) -> pd.DataFrame:
    """Labels of n images (3 per patient), 5% unknown; hernia has no positive (not estimable)."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"image_id": [f"img{i:04d}" for i in range(n)],
                       "patient_id": [f"pat{i // 3:04d}" for i in range(n)]})
    for f in FINDINGS:
        y = (rng.random(n) < (0.3 if f != "hernia" else 0.0)).astype(float)
        y[rng.random(n) < 0.05] = np.nan
        df[f"y_{f}"] = y
    return df


def seeds_of(labels: pd.DataFrame, signal: float, n_seeds: int, seed: int, findings=FINDINGS) -> list:
    """n_seeds runs of one init: a shared image-level signal, a per-seed strength and per-seed noise;
    scores are probabilities rounded to multiples of 1/128 (ties)."""
    rng = np.random.default_rng(seed)
    shared = {f: rng.normal(size=len(labels)) for f in findings}
    runs = []
    for _ in range(n_seeds):
        df = labels[["image_id", "patient_id"] + [f"y_{f}" for f in findings]].copy()
        strength = signal + 0.3 * rng.normal()
        for f in findings:
            logit = strength * df[f"y_{f}"].fillna(0).to_numpy() + shared[f] + 0.6 * rng.normal(size=len(df))
            df[f"p_{f}"] = np.round(128 / (1 + np.exp(-logit))) / 128  # dyadic: seed sums are exact
        runs.append(df.sample(frac=1.0, random_state=len(runs)))  # row order never matters
    return runs


@pytest.fixture(scope="module")
def arms():
    labels = truth()
    return {"dino": seeds_of(labels, 1.6, 3, 1), "imagenet": seeds_of(labels, 1.0, 3, 2),
            "mimic": seeds_of(labels, 1.2, 2, 3)}


def test_one_seed_metrics_equal_evaluate_exactly(arms):
    df = arms["dino"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        m = scoring.evaluate_predictions(df, n_resamples=120, seed=4, cluster="patient",
                                         threshold_from="test")
    out = pl.pooled_metrics({"dino": [df]}, n_resamples=120, seed=4, cluster="patient")
    assert list(out.columns) == list(pl.POOLED_COLUMNS)
    for f in FINDINGS[:3]:
        row = out[out.finding == f].iloc[0]
        want = m["per_finding"][f]["metrics"]["auroc"]
        assert (row.auroc, row.auroc_lo, row.auroc_hi) == (want["value"], want["ci_low"], want["ci_high"])
        ensemble = (row.ensemble_auroc, row.ensemble_lo, row.ensemble_hi)
        assert ensemble == (row.auroc, row.auroc_lo, row.auroc_hi)
        assert row.n_resamples_used == want["n_resamples_used"] and row.n_seeds == 1 and np.isnan(row.seed_sd)
    mean = out[out.finding == "mean"].iloc[0]
    want = m["macro"]["metrics"]["auroc"]
    assert (mean.auroc, mean.auroc_lo, mean.auroc_hi) == (want["value"], want["ci_low"], want["ci_high"])
    hernia = out[out.finding == "hernia"].iloc[0]
    assert np.isnan(hernia.auroc) and "not estimable: no positives" in hernia.note


def test_one_seed_comparison_equals_compare_predictions_exactly(arms):
    one = {name: [runs[0]] for name, runs in arms.items()}
    for kwargs in ({}, {"reference": "imagenet", "alternative": "greater"}, {"family": "all"}):
        want = cp.compare_predictions({n: r[0] for n, r in one.items()}, n_resamples=150, seed=2, **kwargs)
        got = pl.compare_arms(one, n_resamples=150, seed=2, **kwargs)
        assert list(got.columns) == list(pl.ARM_COLUMNS)
        pd.testing.assert_frame_equal(got[list(cp.COLUMNS)], want, check_exact=True)
        assert (got.n_seeds_a == 1).all() and got.seed_sd_a.isna().all()
        assert got.attrs["bootstrap"] == want.attrs["bootstrap"] and got.attrs["pairs"] == want.attrs["pairs"]


def test_pooled_values_are_the_seed_means_and_the_stats_engine(arms):
    out = pl.pooled_metrics(arms, n_resamples=200, seed=1)
    assert out[["arm", "finding"]].values.tolist()[:5] == [["dino", f] for f in (*FINDINGS, "mean")]
    for arm, runs in arms.items():
        for f in FINDINGS[:3]:
            row = out[(out.arm == arm) & (out.finding == f)].iloc[0]
            per_seed = [roc_auc_score(d[f"y_{f}"].dropna(), d.loc[d[f"y_{f}"].notna(), f"p_{f}"])
                        for d in runs]
            assert row.auroc == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert row.seed_sd == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
            assert row.n_seeds == len(runs) and row.auroc_lo < row.auroc < row.auroc_hi
            ens = pd.concat([d.set_index("image_id")[[f"y_{f}", f"p_{f}"]] for d in runs], axis=1)
            y = ens[f"y_{f}"].iloc[:, 0]
            p = ens[f"p_{f}"].mean(axis=1)
            assert row.ensemble_auroc == pytest.approx(roc_auc_score(y[y.notna()], p[y.notna()]), abs=1e-12)
    # an arm's numbers do not depend on the other arms, their order, or the order of its runs
    alone = pl.pooled_metrics({"x": arms["dino"][::-1]}, n_resamples=200, seed=1)
    both = out[out.arm == "dino"].drop(columns="arm").reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.drop(columns="arm"), both, check_exact=False, rtol=0, atol=1e-15)
    assert out.attrs["arms"]["dino"]["n_seeds"] == 3 and "spawn_key=(b, 1, stream)" in out.attrs["seed_draws"]


def test_compare_arms_differences_ci_p_and_bh(arms):
    table = pl.compare_arms(arms, reference="imagenet", n_resamples=200, seed=1)
    metrics = pl.pooled_metrics(arms, n_resamples=200, seed=1)
    assert table[["model_a", "model_b"]].drop_duplicates().values.tolist() == [["dino", "imagenet"],
                                                                              ["mimic", "imagenet"]]
    for r in table[table.finding != "hernia"].itertuples():
        a = metrics[(metrics.arm == r.model_a) & (metrics.finding == r.finding)].iloc[0]
        b = metrics[(metrics.arm == r.model_b) & (metrics.finding == r.finding)].iloc[0]
        assert (r.auroc_a, r.auroc_b, r.seed_sd_a, r.seed_sd_b) == (a.auroc, b.auroc, a.seed_sd, b.seed_sd)
        assert r.diff == r.auroc_a - r.auroc_b and r.diff_lo < r.diff_hi
        assert (r.n_seeds_a, r.n_seeds_b) == (a.n_seeds, b.n_seeds) and np.isnan(r.p_delong)
    dino = table[(table.model_a == "dino") & (table.finding == "mean")].iloc[0]
    assert dino["diff"] > 0 and dino.p_bootstrap < 0.05 and dino.diff_lo > 0
    for _, rows in table.groupby(["model_a", "model_b"]):
        tests = rows[(rows.finding != "mean") & rows.p_bootstrap.notna()]
        np.testing.assert_allclose(tests.p_adjusted, sps.false_discovery_control(tests.p_bootstrap))
    assert (table.loc[table.p_bootstrap.notna() & (table.finding != "mean"), "note"]
            .str.contains(pl.NO_DELONG)).all()
    # the p-value is today's definition on the two-level resampled differences
    boots = pl._bootstraps(pl.arm_sets(arms), 200, 1, "patient", 2**28)[1]
    j = predictions.PredictionSet.from_frame(arms["dino"][0]).column("cardiomegaly")
    d = boots["dino"].pooled[:, j] - boots["imagenet"].pooled[:, j]
    row = table[(table.model_a == "dino") & (table.finding == "cardiomegaly")].iloc[0]
    assert row.p_bootstrap == min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    one = pl.compare_arms(arms, reference="imagenet", n_resamples=200, seed=1, alternative="greater")
    np.testing.assert_array_equal(one.diff_lo, table.diff_lo)
    r1 = one[(one.model_a == "dino") & (one.finding == "cardiomegaly")].iloc[0]
    assert r1.p_bootstrap == np.mean(d <= 0)


def test_an_arm_with_one_seed_against_several_and_the_ensemble_frame(arms):
    mixed = {"dino": arms["dino"][:1], "imagenet": arms["imagenet"]}
    table = pl.compare_arms(mixed, n_resamples=80)
    assert (table.n_seeds_a == 1).all() and (table.n_seeds_b == 3).all() and table.p_delong.isna().all()
    ens = pl.ensemble_frame(arms["dino"])
    assert len(ens) == 240 and list(ens.columns[:2]) == ["image_id", "patient_id"]
    m = pl.pooled_metrics({"dino": arms["dino"]}, n_resamples=80)
    single = pl.pooled_metrics({"ens": [ens]}, n_resamples=80)
    np.testing.assert_allclose(m.ensemble_auroc, single.auroc, rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.ensemble_lo, single.auroc_lo, rtol=0, atol=1e-15)
    assert len(cp.compare_predictions({"a": ens, "b": pl.ensemble_frame(arms["imagenet"])}, n_resamples=20))


def test_refusals(arms):
    labels = truth()
    dino = arms["dino"]
    with pytest.raises(InputError, match=r"different images: 3 image\(s\) only in"):
        pl.pooled_metrics({"dino": [dino[0], dino[1].iloc[3:]]}, n_resamples=10)
    with pytest.raises(InputError, match="different images"):
        pl.compare_arms({"dino": dino, "other": seeds_of(truth(n=200), 1.0, 2, 5)}, n_resamples=10)
    flipped = dino[1].copy()
    flipped["y_cardiomegaly"] = 1.0 - flipped["y_cardiomegaly"]
    with pytest.raises(InputError, match="labels of finding 'cardiomegaly' differ"):
        pl.pooled_metrics({"dino": [dino[0], flipped]}, n_resamples=10)
    with pytest.raises(InputError, match="arm 'dino' has no runs"):
        pl.pooled_metrics({"dino": []}, n_resamples=10)
    with pytest.raises(InputError, match="one frame, not a list"):
        pl.pooled_metrics({"dino": dino[0]}, n_resamples=10)
    with pytest.raises(InputError, match="predict different findings"):
        pl.pooled_metrics({"dino": [dino[0], seeds_of(labels, 1.0, 1, 9, FINDINGS[:2])[0]]}, n_resamples=10)
    with pytest.raises(InputError, match="at least two arms"):
        pl.compare_arms({"dino": dino}, n_resamples=10)
    with pytest.raises(InputError, match="did you mean 'imagenet'"):
        pl.compare_arms(arms, reference="imagenett", n_resamples=10)
    with pytest.raises(InputError, match="not in the predictions"):
        pl.pooled_metrics(arms, findings=["cardiomegaly", "edema"], n_resamples=10)
    sub = pl.pooled_metrics(arms, findings=["atelectasis"], n_resamples=10)
    assert set(sub.finding) == {"atelectasis", "mean"}


# ---------------------------------------------------------------------------------------------
# cxrbench compare --arm


def write_runs(tmp_path, arms, seed=7, n_resamples=40):
    runs = {}
    for name, frames in arms.items():
        runs[name] = []
        for i, df in enumerate(frames):
            run = tmp_path / f"{name}-s{i}"
            predictions.write_predictions(df, run / "eval" / "test" / "predictions.parquet")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UndefinedMetricWarning)
                run_eval.evaluate_run(run, "test", n_resamples=n_resamples, seed=seed, threshold_from="test")
            runs[name].append(run)
    return runs


@pytest.fixture
def arm_runs(tmp_path, arms):
    return write_runs(tmp_path, arms)


def arm_option(name, runs):
    return ["--arm", f"{name}=" + ",".join(map(str, runs))]


def test_cli_compare_arms_table_csv_json(tmp_path, cli_runner, arm_runs, arms):
    out = tmp_path / "cmp.json"
    args = ["compare", *arm_option("dino", arm_runs["dino"]), *arm_option("imagenet", arm_runs["imagenet"]),
            "--reference", "imagenet", "--out", str(out)]
    result = cli_runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "A = dino (3 seeds)  vs  B = imagenet (3 seeds)" in result.stdout
    assert "seed SD A" in result.stdout and "two-level bootstrap" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["format"] == cp.COMPARISON_FORMAT and doc["settings"]["bootstrap"]["seed"] == 7  # stored
    assert doc["settings"]["arms"]["dino"]["n_seeds"] == 3 and len(doc["arms"]["dino"]) == 3
    want = pl.compare_arms({"dino": arms["dino"], "imagenet": arms["imagenet"]}, reference="imagenet",
                           n_resamples=40, seed=7)
    got = pd.DataFrame(doc["rows"])
    np.testing.assert_allclose(got["diff_lo"].astype(float), want["diff_lo"], rtol=0, atol=1e-10)  # JSON
    assert got.n_seeds_a.tolist() == [3] * len(got)
    # the pooled format of a study's pooled.json: the arms' pooled metrics beside the comparisons
    metrics = pd.DataFrame(cp.read_comparison(out)["metrics"])
    want_m = pl.pooled_metrics({"dino": arms["dino"], "imagenet": arms["imagenet"]}, n_resamples=40, seed=7)
    np.testing.assert_allclose(metrics["auroc_lo"].astype(float), want_m["auroc_lo"], rtol=0, atol=1e-10)
    csv = tmp_path / "cmp.csv"
    plain = arm_runs["mimic"][0]  # a plain run is a one-seed arm named as before
    result = cli_runner.invoke(app, ["compare", str(plain), *arm_option("dino", arm_runs["dino"]),
                                     "--out", str(csv), "-q"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(csv)
    assert table[["model_a", "model_b"]].iloc[0].tolist() == ["mimic-s0", "dino"]
    assert set(table.n_seeds_a) == {1} and set(table.n_seeds_b) == {3}


def test_cli_compare_one_seed_arms_equal_plain_runs(tmp_path, cli_runner, arm_runs):
    a, b = arm_runs["dino"][0], arm_runs["imagenet"][0]
    plain, armed = tmp_path / "plain.csv", tmp_path / "armed.csv"
    assert cli_runner.invoke(app, ["compare", str(a), str(b), "--out", str(plain), "-q"]).exit_code == 0
    result = cli_runner.invoke(app, ["compare", str(a), "--arm", f"imagenet-s0={b}", "--out", str(armed),
                                     "-q"])
    assert result.exit_code == 0, result.output
    want, got = pd.read_csv(plain), pd.read_csv(armed)
    pd.testing.assert_frame_equal(got[want.columns.tolist()], want)


@pytest.mark.parametrize("arm_args,message", [
    (["--arm", "dino"], "--arm dino: expected NAME=RUN1,RUN2"),
    (["--arm", "=a,b"], "--arm =a,b: expected NAME=RUN1,RUN2"),
    (["--arm", "dino="], "arm 'dino' has no runs"),
    (["--arm", "dino=a,,b"], "empty run name"),
])
def test_cli_compare_malformed_arm(cli_runner, arm_args, message):
    result = cli_runner.invoke(app, ["compare", *arm_args, "--arm", "x=y"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output + result.stderr


def test_cli_compare_arm_refusals(tmp_path, cli_runner, arm_runs):
    dino, imagenet = arm_runs["dino"], arm_runs["imagenet"]
    cases = [
        ([*arm_option("a", dino), *arm_option("b", [imagenet[0], dino[1]])],
         "is given twice (arms 'a' and 'b')"),
        ([str(dino[0]), *arm_option("b", dino[:2])], "is given twice"),
        ([*arm_option("a", dino), *arm_option("a", imagenet)], "arm name 'a' is used twice"),
        ([*arm_option("a", dino)], "at least two arms"),
        ([*arm_option("a", dino), *arm_option("b", imagenet), "--reference", "c"], "not one of the compared"),
        ([str(dino[0])], "at least two runs"),
    ]
    other = tmp_path / "other.parquet"  # a run on other images
    df = pd.read_parquet(imagenet[1] / "eval" / "test" / "predictions.parquet").iloc[:-1]
    predictions.write_predictions(df, other)
    cases.append(([*arm_option("a", dino), *arm_option("b", [imagenet[0], other])], "different images"))
    for args, message in cases:
        result = cli_runner.invoke(app, ["compare", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (message, result.stderr)
        assert "Traceback" not in result.output + result.stderr



def test_pooled_comparison_fdr_none_and_one_arm(arms):
    two = {"dino": arms["dino"], "imagenet": arms["imagenet"]}
    metrics, table = pl.pooled_comparison(two, "imagenet", n_resamples=30, fdr="none")
    assert table is not None and table["p_adjusted"].equals(table["p_bootstrap"])
    assert table.attrs["fdr"] == "none" and set(metrics["arm"]) == {"dino", "imagenet"}
    metrics, table = pl.pooled_comparison({"dino": arms["dino"]}, n_resamples=30)
    assert table is None and set(metrics["arm"]) == {"dino"}


def test_a_pooled_json_of_the_earlier_format_still_reads(tmp_path):
    legacy = {"format": "cxrbench.pooled/1", "dataset": "a", "metrics": [{"arm": "x", "finding": "mean"}],
              "comparisons": [{"model_a": "x", "model_b": "y", "finding": "mean"}]}
    (tmp_path / "pooled.json").write_text(json.dumps(legacy))
    doc = cp.read_comparison(tmp_path / "pooled.json")
    assert doc["rows"] == legacy["comparisons"] and doc["metrics"] == legacy["metrics"]
