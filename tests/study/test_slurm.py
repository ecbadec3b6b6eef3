"""The SLURM executor against the sbatch scripts and dependency flags submitit generates.

A fake SLURM (``data/fake_slurm.py``: sbatch, srun, sacct, squeue, scancel, scontrol on PATH) records
every submission; in the fast tests jobs stay PENDING (record only), in the slow ones they run as
local processes once their afterok dependencies completed, including a DDP run of two tasks that is
preempted, requeued by submitit's handler and resumed from its last.pt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.index.schema import write_index
from cxrbench.study.jobs import format_status, read_records, study_status
from cxrbench.study.load import load_study, parse_study
from cxrbench.study.plan import build_plan
from cxrbench.study.runner import run_study
from cxrbench.study.runtime_config import ExecutorSpec
from cxrbench.study.slurm import sbatch_parameters, submit_study
from cxrbench.study.state import write_marker

FAKE = Path(__file__).resolve().parent / "data" / "fake_slurm.py"
FINDINGS = ["cardiomegaly", "pleural_effusion"]
pytest.importorskip("submitit")  # the slurm extra (part of dev)

SRC = str(Path(__file__).resolve().parents[2] / "src")

CONFIG = """\
name: fake
datasets:
  a: {adapter: nih, root: data/a}
  b: {adapter: nih, root: data/b}
  src: {adapter: nih, root: data/src}
inits:
  rand: {init: random-vit-test, datasets: [a, b]}
  dom: {init: "domain:src", base: random-vit-test}
comparisons: {reference: rand}
train: {epochs: 2}
evaluation: {bootstrap: 20}
external: [{train: a, test: [b]}]
executor:
  kind: slurm
  partition: gpu
  account: lab
  qos: high
  constraint: a100
  gpus_per_run: 4
  nodes_per_run: 2
  cpus_per_gpu: 6
  mem: 64G
  time: "1-00:00:00"
  setup: ["module load cuda"]
  extra: {exclusive: true, mail-type: FAIL}
"""


class FakeSlurm:
    """The fake SLURM's state folder: submissions, job states, scancel/scontrol calls."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def submissions(self) -> list[dict]:
        path = self.state / "submissions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def job(self, job_id: str) -> dict:
        return json.loads((self.state / "jobs" / f"{job_id}.json").read_text())

    def set_state(self, job_id: str, state: str) -> None:
        job = self.job(job_id)
        job["state"] = state
        (self.state / "jobs" / f"{job_id}.json").write_text(json.dumps(job))

    def calls(self) -> list[dict]:
        path = self.state / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def wait(self, job_ids: list[str], timeout: float = 600) -> dict[str, str]:
        t0 = time.time()
        while time.time() - t0 < timeout:
            states = {j: self.job(j)["state"] for j in job_ids}
            if all(s not in ("PENDING", "RUNNING", "REQUEUED") for s in states.values()):
                return states
            time.sleep(0.2)
        raise AssertionError(f"jobs still running after {timeout} s: {states}")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    env = json.loads(
        subprocess.check_output(
            [sys.executable, str(FAKE), "install", str(tmp_path / "bin"), str(tmp_path / "slurm")]
        )
    )
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FAKE_SLURM_RUN", "0")
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return FakeSlurm(tmp_path / "slurm")


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG)
    for d in ("a", "b", "src"):
        (tmp_path / "data" / d).mkdir(parents=True)
    return load_study(path)


def _fake_index(step, ctx) -> None:
    step.out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(
        {
            "image_id": ["i0", "i1"],
            "patient_id": ["p0", "p1"],
            "study_id": None,
            "path": ["x0.png", "x1.png"],
            "view": "PA",
            "split": ["train", "test"],
            "dataset": "nih",
            "sex": "F",
            "age": 1.0,
            **{f: np.float32(1.0) for f in FINDINGS},
        }
    )
    write_index(df, step.out / "index.parquet", FINDINGS)


# --- config ------------------------------------------------------------------------------------------


def test_executor_keys_are_validated_like_the_rest(tmp_path):
    base = yaml.safe_load(CONFIG)
    assert parse_study(base).executor.gpus_per_run == 4
    for bad, words in (
        ({"kind": "pbs"}, "executor.kind"),
        ({"partiton": "gpu"}, "did you mean 'partition'"),
        ({"gpus_per_run": -1}, "executor.gpus_per_run"),
        ({"time": "soon"}, "time"),
        ({"mem": "lots"}, "executor.mem"),
        ({"extra": {"dependency": "x"}}, "set by cxrbench"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({**base, "executor": bad}))
        with pytest.raises(InputError) as err:
            load_study(path)
        assert words in err.value.one_line(), err.value.one_line()
    assert parse_study({**base, "executor": "slurm", "tracker": "mlflow"}).tracker.kind == "mlflow"


def test_executor_and_tracker_are_in_no_step_key(study, tmp_path):
    keys = {s.id: s.key for s in build_plan(study).steps}
    plain = tmp_path / "plain.yaml"
    doc = yaml.safe_load(CONFIG)
    doc.pop("executor")
    plain.write_text(yaml.safe_dump(doc))
    other = load_study(plain, out=study.out)
    assert {s.id: s.key for s in build_plan(other).steps} == keys
    doc["tracker"] = {"kind": "wandb", "project": "p"}
    plain.write_text(yaml.safe_dump(doc))
    assert {s.id: s.key for s in build_plan(load_study(plain, out=study.out)).steps} == keys
    assert other.config.config_hash() == study.config.config_hash()


def test_sbatch_parameters_per_step_kind():
    spec = ExecutorSpec(
        kind="slurm",
        gpus_per_run=4,
        nodes_per_run=2,
        cpus_per_gpu=6,
        time="2:00:00",
        step_time=30,
        extra={"exclusive": True, "comment": False},
    )
    train = sbatch_parameters(spec, "train", "n", ["1", "2"])
    assert (
        train["nodes"],
        train["ntasks_per_node"],
        train["gpus_per_node"],
        train["cpus_per_task"],
        train["time"],
        train["dependency"],
    ) == (2, 4, 4, 6, 120, "afterok:1:2")
    assert train["additional_parameters"] == {
        "requeue": True,
        "kill-on-invalid-dep": "yes",
        "exclusive": True,
    }
    ev = sbatch_parameters(spec, "eval", "n", [])
    assert (ev["nodes"], ev["ntasks_per_node"], ev["gpus_per_node"], ev["time"], ev["dependency"]) == (
        1,
        1,
        1,
        30,
        None,
    )
    cache = sbatch_parameters(spec, "cache", "n", [])
    assert (cache["gpus_per_node"], cache["cpus_per_task"]) == (None, 24)
    # --device cpu: no job asks for a GPU (a CPU-only partition refuses --gpus-per-node); a training run
    # keeps one task per process of gpus_per_run (gloo)
    cpu = {k: sbatch_parameters(spec, k, "n", [], device="cpu") for k in ("train", "eval", "cache")}
    assert {p["gpus_per_node"] for p in cpu.values()} == {None}
    train = cpu["train"]
    assert (train["nodes"], train["ntasks_per_node"], train["cpus_per_task"]) == (2, 4, 6)


# --- submission (record only) ------------------------------------------------------------------------


def _by_step(fake: FakeSlurm) -> dict[str, dict]:
    return {s["flags"]["job-name"].removeprefix("cxr-fake-"): s for s in fake.submissions()}


def test_every_step_one_job_with_afterok_dependencies_along_the_graph(study, fake_slurm):
    summary = run_study(study, quiet=True)  # the config says executor: slurm
    plan = build_plan(study)
    subs = _by_step(fake_slurm)
    job_of = dict(summary.submitted)
    known = [s for s in plan.steps if not s.deferred]
    assert set(job_of) == {s.id for s in known} | {"_replan"}
    for s in known:
        flags = subs[s.id.replace("/", ".")]["flags"]
        deps = sorted(job_of[d] for d in s.deps)
        assert sorted(subs[s.id.replace("/", ".")]["deps"]) == deps, s.id
        assert flags.get("dependency", "") == (
            "afterok:" + ":".join(job_of[d] for d in s.deps) if deps else ""
        )
        assert (flags["partition"], flags["account"], flags["qos"], flags["constraint"], flags["mem"]) == (
            "gpu",
            "lab",
            "high",
            "a100",
            "64G",
        )
        assert (
            flags["requeue"] is True and flags["kill-on-invalid-dep"] == "yes" and flags["exclusive"] is True
        )
        assert flags["mail-type"] == "FAIL" and flags["signal"] == "USR2@90"
        text = subs[s.id.replace("/", ".")]["text"]
        assert "module load cuda" in text and "srun " in text and "submitit.core._submit" in text
        if s.kind == "train":
            assert (flags["nodes"], flags["ntasks-per-node"], flags["gpus-per-node"], flags["time"]) == (
                "2",
                "4",
                "4",
                str(24 * 60),
            )
        else:
            assert flags["nodes"] == "1" and flags["ntasks-per-node"] == "1"
    # the domain arm's steps are known only after indexing: one job submits them, after the index jobs
    deferred = [s.id for s in plan.steps if s.deferred]
    assert deferred and sorted(subs["replan"]["deps"]) == sorted(
        job_of[f"index/{d}"] for d in ("a", "b", "src")
    )
    rec = read_records(study)["train/a/r224/rand/s0"]
    assert (
        rec.job_id == job_of["train/a/r224/rand/s0"] and rec.tasks == 8 and rec.stderr.endswith("_0_log.err")
    )
    assert f"/{rec.job_id}/" in rec.stderr


def test_resubmission_keeps_queued_jobs_and_never_resubmits_done_steps(study, fake_slurm, cli_runner):
    first = run_study(study, quiet=True)
    # the index jobs "finish" (their steps done, their jobs COMPLETED): what the replan job then sees
    run_study(study, quiet=True, executor="local", kinds=("index",), executors={"index": _fake_index})
    for d in ("a", "b", "src"):
        fake_slurm.set_state(first.submitted[f"index/{d}"], "COMPLETED")
    second = submit_study(study, quiet=True)
    plan = build_plan(study)
    assert not any(s.deferred for s in plan.steps)
    assert sorted(second.skipped) == ["index/a", "index/b", "index/src"]
    assert set(second.kept) == set(first.submitted) - {"_replan", "index/a", "index/b", "index/src"}
    assert all(second.kept[k] == first.submitted[k] for k in second.kept)
    new = set(second.submitted)
    assert new == {s.id for s in plan.steps} - set(second.kept) - set(second.skipped)
    subs = _by_step(fake_slurm)
    job_of = {**second.kept, **second.submitted}
    for sid in new:  # dependencies on the kept jobs, none on done steps
        assert sorted(subs[sid.replace("/", ".")]["deps"]) == sorted(
            job_of[d] for d in plan[sid].deps if plan.by_id[d].status != "done"
        )
    # status: queued everywhere but the indexes; then cancel what was submitted
    rows = {r.id: r for r in study_status(study)}
    assert rows["index/a"].status == "done" and rows["report"].status == "queued"
    assert {r.status for r in rows.values()} == {"done", "queued"}
    result = cli_runner.invoke(app, ["study", "status", str(study.path)])
    assert result.exit_code == 0 and "queued" in result.output and "done 3" in result.output, result.output
    result = cli_runner.invoke(app, ["study", "cancel", str(study.path)])
    assert result.exit_code == 0, result.output
    cancelled = [c for c in fake_slurm.calls() if c["cmd"] == "scancel"]
    assert len(cancelled) == 1 and set(cancelled[0]["args"]) == {first.submitted["_replan"], *job_of.values()}
    assert {r.status for r in study_status(study) if r.id != "_replan"} == {"done", "cancelled"}
    # a rerun resubmits what was cancelled (new ids, the old ones remembered)
    third = submit_study(study, quiet=True)
    assert set(third.submitted) == new | set(second.kept) and not third.kept
    rec = read_records(study)["report"]
    assert rec.job_id == third.submitted["report"] and second.submitted["report"] in rec.previous


def test_a_failed_step_shows_its_error_and_log(study, fake_slurm):
    first = run_study(study, quiet=True)
    victim = "cache/a/r224"
    fake_slurm.set_state(first.submitted[victim], "FAILED")
    step = build_plan(study)[victim]
    write_marker(study.out, step, "failed", error="cache/a: synthetic failure")
    fake_slurm.set_state(first.submitted["cache/b/r224"], "TIMEOUT")
    rows = {r.id: r for r in study_status(study)}
    assert rows[victim].status == "failed" and rows[victim].detail == "cache/a: synthetic failure"
    assert rows[victim].log == read_records(study)[victim].stderr
    assert rows["cache/b/r224"].status == "failed" and "TIMEOUT" in rows["cache/b/r224"].detail
    assert "raise executor.step_time (now 4:00:00)" in rows["cache/b/r224"].detail  # the fix: more time
    text = format_status(list(rows.values()))
    assert f"log: {rows[victim].log}" in text and "synthetic failure" in text


def test_without_accounting_squeue_tells_what_is_alive(study, fake_slurm, monkeypatch):
    first = run_study(study, quiet=True)
    fake_slurm.set_state(first.submitted["index/a"], "COMPLETED")
    monkeypatch.setenv("FAKE_SLURM_NO_SACCT", "1")
    rows = {r.id: r for r in study_status(study)}
    assert rows["index/b"].status == "queued" and rows["index/a"].status == "pending"  # finished, not done
    again = submit_study(study, quiet=True)  # index/a again, so a new job waits for it to submit the rest
    assert set(again.submitted) == {"index/a", "_replan"} and len(again.kept) == len(first.submitted) - 2
    third = submit_study(study, quiet=True)
    assert not third.submitted and third.kept["_replan"] == again.submitted["_replan"]


def test_without_slurm_the_error_says_so(study, tmp_path, monkeypatch, cli_runner):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    result = cli_runner.invoke(app, ["study", "run", str(study.path), "--executor", "slurm"])
    assert result.exit_code == 2 and "no SLURM" in result.output and "Traceback" not in result.output
    result = cli_runner.invoke(app, ["study", "run", str(study.path), "--executor", "pbs"])
    assert result.exit_code == 2 and "--executor" in result.output


# --- jobs that run (slow) ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_study_runs_through_fake_slurm_with_ddp_and_a_requeue(
    tmp_path, fake_slurm, monkeypatch, cli_runner
):
    """Phantom -> index -> cache -> a 2-task DDP training run (preempted: USR2, requeued by submitit's
    handler, resumed from last.pt) -> eval -> report, every step a job run by the fake SLURM."""
    monkeypatch.setenv("FAKE_SLURM_RUN", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = {
        "name": "rq",
        "datasets": {
            "a": {
                "adapter": "nih",
                "labels": ",".join(FINDINGS),
                "phantom": {"patients": 60, "size": 32, "site": "A", "seed": 1},
            }
        },
        "preprocess": {"px32": {"size": 32}},
        "inits": {"rand": {"init": "random-vit-test"}},
        "train": {
            "epochs": 30,
            "batch_size": 16,
            "lr": 1e-3,
            "patience": 0,
            "workers": 0,
            "deterministic": True,
        },
        "evaluation": {"bootstrap": 10},
        "executor": {"kind": "slurm", "gpus_per_run": 2, "cpus_per_gpu": 1},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    study = load_study(path)
    result = cli_runner.invoke(app, ["study", "run", str(path), "--device", "cpu", "-q"])
    # phantom, index, cache, train, eval, shortcut (the metadata-only baseline), report
    assert result.exit_code == 0 and "7 job(s) submitted" in result.output, result.output
    jobs = {r.step: r.job_id for r in read_records(study).values()}
    train_id = jobs["train/a/px32/rand/s0"]
    last = study.out / "runs/a/px32/rand/s0/checkpoints/last.pt"
    t0 = time.time()
    while not last.exists():
        assert time.time() - t0 < 300 and fake_slurm.job(train_id)["state"] in ("PENDING", "RUNNING")
        time.sleep(0.05)
    subprocess.check_call(
        ["scancel", train_id, "--signal", "SIGTERM"]
    )  # what submitit's job._interrupt() does
    subprocess.check_call(["scancel", train_id, "--signal", "USR2"])
    states = fake_slurm.wait(list(jobs.values()))
    assert set(states.values()) == {"COMPLETED"}, states
    assert fake_slurm.job(train_id)["restarts"] == 1
    assert {"cmd": "scontrol", "args": ["requeue", train_id]} in fake_slurm.calls()
    starts = [json.loads(line) for line in (last.parents[1] / "log.jsonl").read_text().splitlines()]
    starts = [r for r in starts if r["kind"] == "start"]
    assert [r["resumed"] for r in starts] == [False, True] and all(r["world_size"] == 2 for r in starts)
    assert starts[1]["step"] > 0
    run_cfg = yaml.safe_load((last.parents[1] / "config.yaml").read_text())
    assert run_cfg["derived"]["world_size"] == 2
    assert {r.status for r in study_status(study)} == {"done"}
    assert (study.out / "report" / "results.csv").is_file()
    again = submit_study(study, quiet=True)
    assert not again.submitted and len(again.skipped) == 7  # nothing done is resubmitted
