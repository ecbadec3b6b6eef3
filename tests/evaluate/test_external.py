"""evaluate.external: external validation as a library function with a CLI door; the study's external
step is this function (same files, same numbers)."""

from __future__ import annotations

import json
import shutil

import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate.external import evaluate_external, shared_findings
from cxrbench.evaluate.inference import predict_split
from cxrbench.evaluate.predictions import read_predictions
from cxrbench.evaluate.scoring import evaluate_predictions

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run, cache = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, cache


def _numbers(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("provenance", "run", "predictions_sha256")}


def test_external_writes_the_three_files_with_thresholds_from_the_source_validation(run_copy, tmp_path):
    run, cache = run_copy
    out = tmp_path / "ext"
    doc = evaluate_external(run, cache, out, n_resamples=50, seed=3, batch_size=8, device="cpu",
                            context={"train_dataset": "a", "test_dataset": "b"})
    assert {p.name for p in out.iterdir()} == {"predictions.parquet", "metrics.json", "operating.json"}
    assert (doc["train_dataset"], doc["test_dataset"]) == ("a", "b")
    findings = shared_findings(run, cache)
    test = predict_split(run, "test", cache_dir=cache, batch_size=8, device="cpu", findings=findings)
    val = predict_split(run, "val", batch_size=8, device="cpu")
    ref = evaluate_predictions(test, val, n_resamples=50, seed=3, threshold_from="val")
    assert doc["per_finding"] == json.loads(json.dumps(ref["per_finding"]))  # the same numbers
    assert read_predictions(out / "predictions.parquet").equals(test)
    rows = json.loads((out / "operating.json").read_text())["rows"]
    assert [r["finding"] for r in rows] == findings


def test_cli_door_equals_the_library_and_bad_use_is_one_line(run_copy, tmp_path, cli_runner):
    run, cache = run_copy
    lib = evaluate_external(run, cache, tmp_path / "lib", n_resamples=20, batch_size=8, device="cpu")
    res = cli_runner.invoke(app, ["evaluate", str(run), "--external", str(cache), "--out",
                                  str(tmp_path / "cli"), "--bootstrap", "20", "--batch-size", "8", "--device",
                                  "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert _numbers(cli) == _numbers(json.loads(json.dumps(lib)))
    assert not (run / "eval" / "test" / "metrics.json").exists()  # the run's own evaluation is untouched
    cases = ((["--external", str(cache)], "--external"), (["--out", str(tmp_path / "o")], "--out"))
    for extra, where in cases:
        bad = cli_runner.invoke(app, ["evaluate", str(run), *extra])
        assert bad.exit_code == 2 and where in bad.output and len(bad.output.strip().splitlines()) == 1


def test_a_cache_without_shared_findings_is_refused(run_copy, tmp_path, tiny_cache_factory):
    run, _ = run_copy
    other = tiny_cache_factory(tmp_path / "other", findings=("pneumothorax",))
    with pytest.raises(InputError, match="share no finding"):
        evaluate_external(run, other, tmp_path / "x", n_resamples=0, device="cpu")
