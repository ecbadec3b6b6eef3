"""The submitit-local executor: every step a real subprocess through submitit's LocalExecutor, started
once the steps it reads are done; the tiny demo study gives the inline runner's results exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from cxrbench.common.errors import InputError
from cxrbench.study.demo import demo_config
from cxrbench.study.jobs import read_records, study_status
from cxrbench.study.load import load_study
from cxrbench.study.runner import run_study

pytest.importorskip("submitit")  # the slurm extra (part of dev)

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def job_env(monkeypatch):
    """Jobs import this worktree's cxrbench and run torch on one thread, as the inline test does."""
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _write(tmp_path: Path, name: str, cfg: dict) -> Path:
    path = tmp_path / name / "study.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_failing_step_stops_with_its_error_and_log(tmp_path, job_env):
    cfg = {
        "name": "broken",
        "datasets": {"a": {"adapter": "nih", "root": str(tmp_path / "missing")}},
        "inits": ["random-vit-test"],
        "executor": {"kind": "submitit-local"},
    }
    study = load_study(_write(tmp_path, "s", cfg))
    with pytest.raises(InputError) as err:
        run_study(study, quiet=True)
    text = err.value.one_line()
    assert "index/a failed" in text and "not found" in text and "_log.err" in text
    rows = {r.id: r for r in study_status(study)}
    assert rows["index/a"].status == "failed" and "not found" in rows["index/a"].detail
    rec = read_records(study)["index/a"]
    assert rec.executor == "submitit-local" and Path(rec.stderr).is_file()
    assert "InputError" in Path(rec.stderr).read_text()


@pytest.mark.slow
def test_the_tiny_demo_through_local_jobs_gives_the_inline_results(tmp_path, job_env, torch_one_thread):
    cfg, _ = demo_config(tiny=True, optional=False)
    # the demo's two original arms, one seed, all labels: every kind of step, 27 jobs (the axes and the
    # ssl arm only add more of the same kinds, each a process here, minutes more on 2 cores)
    cfg["inits"] = {k: v for k, v in cfg["inits"].items() if k in ("random", "source-pretrained")}
    cfg["inits"]["source-pretrained"].pop("adaptations", None)
    cfg.pop("tuning", None)  # tuning trials: train steps of another kind (tests/study/test_tuning.py)
    cfg.update(seeds=[0], label_fractions=[1.0])
    inline = load_study(_write(tmp_path, "inline", cfg))
    run_study(inline, quiet=True, device="cpu")
    cfg["executor"] = {"kind": "submitit-local", "max_parallel": 2}
    jobs = load_study(_write(tmp_path, "jobs", cfg))
    summary = run_study(jobs, quiet=True, device="cpu")
    n = len(summary.executed)
    assert not summary.failed and n == 27
    records = read_records(jobs)
    assert len(records) == n and {r.executor for r in records.values()} == {"submitit-local"}
    assert len({r.job_id for r in records.values()}) == n  # one process per step
    a = (inline.out / "report" / "results.csv").read_text()
    b = (jobs.out / "report" / "results.csv").read_text()
    assert a == b
    again = run_study(jobs, quiet=True, device="cpu")
    assert not again.executed and len(again.skipped) == n
