"""`cxrbench phantom` on the command line: success, summary, refusals with one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrbench.cli import app


def _err(result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 mixes streams unless asked
        return result.output


def test_phantom_writes_a_dataset_and_prints_a_summary(cli_runner, tmp_path):
    out = tmp_path / "nih"
    result = cli_runner.invoke(
        app,
        [
            "phantom",
            str(out),
            "--format",
            "nih",
            "--patients",
            "4",
            "--size",
            "48",
            "--seed",
            "2",
            "--site",
            "B",
            "--prevalence",
            "cardiomegaly=0.5",
            "-o",
            "layout=flat",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, _err(result)
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("wrote ")
    assert "of 4 patients (nih, 48 px, site B, seed 2)" in result.stdout
    truth = pd.read_parquet(out / "_phantom" / "truth.parquet")
    assert f"wrote {len(truth)} images" in result.stdout
    assert (out / "Data_Entry_2017_v2020.csv").is_file() and (out / "images").is_dir()


def test_phantom_refuses_non_empty_out_unless_overwrite(cli_runner, tmp_path):
    args = ["phantom", str(tmp_path / "d"), "--format", "csv", "--patients", "2", "--size", "32", "-q"]
    assert cli_runner.invoke(app, args).exit_code == 0
    again = cli_runner.invoke(app, args)
    assert again.exit_code == 2
    assert "not empty" in _err(again) and "--overwrite" in _err(again) and "Traceback" not in _err(again)
    assert cli_runner.invoke(app, args + ["--overwrite"]).exit_code == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "nihh"], "did you mean 'nih'"),
        (["--format", "nih", "--patients", "0"], "--patients"),
        (["--format", "nih", "--size", "10"], "--size"),
        (["--format", "nih", "--prevalence", "cardiomegally=0.2"], "did you mean 'cardiomegaly'"),
        (["--format", "nih", "--prevalence", "edema=2"], "outside [0, 1]"),
        (["--format", "nih", "-o", "layout"], "KEY=VALUE"),
        (["--format", "nih", "-o", "layot=flat"], "did you mean 'layout'"),
        (["--format", "csv", "--prevalence", "nodule=0.2"], "unsupported"),
        (["--format", "vindr", "--val-fraction", "0.1"], "unknown option"),
        (["--format", "nih", "--views", "PA=0.2,LATERAL=0.8"], "lateral"),
    ],
)
def test_phantom_bad_options_exit_2_with_one_line(cli_runner, tmp_path, extra, message):
    args = ["phantom", str(tmp_path / "x"), "--patients", "2", "--size", "32", "-q"]
    if "--patients" in extra:
        args = ["phantom", str(tmp_path / "x"), "--size", "32", "-q"]
    if "--size" in extra:
        args = ["phantom", str(tmp_path / "x"), "--patients", "2", "-q"]
    result = cli_runner.invoke(app, args + extra)
    err = _err(result)
    assert result.exit_code == 2, (result.exit_code, err)
    assert message in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_phantom_help_documents_formats_and_options(cli_runner):
    result = cli_runner.invoke(app, ["phantom", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for word in (
        "nih",
        "chexpert",
        "mimic",
        "padchest",
        "vindr",
        "csv",
        "--prevalence",
        "--overwrite",
        "layout=kaggle|flat",
        "test_set",
    ):
        assert word in text, word
