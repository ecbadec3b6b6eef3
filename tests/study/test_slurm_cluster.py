"""The SLURM executor on a real one-node SLURM (slurmctld + slurmd + munge, and slurmdbd + MariaDB for
sacct when installed; ``tests/study/conftest.py`` starts it, ``scripts/slurm_cluster.py`` is the recipe).

What the fake of ``test_slurm.py`` cannot prove: real sbatch scripts and flags, real afterok
dependencies and ``--kill-on-invalid-dep``, real sacct/squeue output, real ``scancel``, a real
``scontrol requeue`` of a running training job and a real time limit, and a 2-task DDP job launched by
srun. Every study here is a small phantom one, every job runs ``--device cpu`` on one thread.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from cxrbench.cli import app
from cxrbench.study.jobs import read_records, study_status
from cxrbench.study.load import load_study
from cxrbench.study.runner import run_study

pytest.importorskip("submitit")  # the slurm extra (part of dev)
pytestmark = pytest.mark.slow

FINDINGS = ["cardiomegaly", "pleural_effusion"]
# the walkthrough of docs/study.md, sized for the test cluster (one node 'localhost', 2 CPUs, no GPU)
EXECUTOR = {"kind": "slurm", "partition": "cpu", "gpus_per_run": 1, "cpus_per_gpu": 1, "time": 20,
            "step_time": 10, "max_requeues": 3}
TRAIN_ID = "train/a/px32/rand/s0"


def _config(name: str, *, patients: int = 40, train: dict | None = None, executor: dict | None = None,
            accounting: bool = True) -> dict:
    ex = {**EXECUTOR, **(executor or {})}
    if accounting:
        ex.setdefault("account", "lab")  # the cluster's account (sacctmgr); without slurmdbd there are none
    return {
        "name": name,
        "datasets": {"a": {"adapter": "nih", "labels": ",".join(FINDINGS),
                           "phantom": {"patients": patients, "size": 32, "site": "A", "seed": 1}}},
        "preprocess": {"px32": {"size": 32}},
        "inits": {"rand": {"init": "random-vit-test"}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "patience": 0, "workers": 0,
                  "deterministic": True, **(train or {})},
        "evaluation": {"bootstrap": 10},
        "executor": ex,
    }


def _write(tmp_path: Path, folder: str, cfg: dict) -> Path:
    path = tmp_path / folder / "study.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _submit(cli_runner, path: Path, *extra: str) -> None:
    result = cli_runner.invoke(app, ["study", "run", str(path), "--device", "cpu", "-q", *extra])
    assert result.exit_code == 0, result.output


def _jobs(study) -> dict[str, str]:
    return {r.step: r.job_id for r in read_records(study).values()}


def _statuses(study) -> dict[str, str]:
    return {r.id: r.status for r in study_status(study)}


def _settled(study, timeout: float = 60) -> dict:
    """study_status once no row is queued or running: the jobs ended (squeue says so), and sacct, whose
    records slurmdbd writes a moment later, agrees."""
    t0 = time.time()
    while True:
        rows = {r.id: r for r in study_status(study)}
        if not any(r.status in ("queued", "running") for r in rows.values()) or time.time() - t0 > timeout:
            return rows
        time.sleep(0.5)


# --- a study end to end --------------------------------------------------------------------------------


def test_a_study_on_slurm_gives_the_inline_results(tmp_path, slurm, cli_runner, torch_one_thread):
    cfg = _config("e2e", accounting=slurm.accounting)
    inline_path = _write(tmp_path, "inline", {**cfg, "executor": {"kind": "local"}})
    inline = load_study(inline_path)
    run_study(inline, quiet=True, device="cpu")
    path = _write(tmp_path, "slurm", cfg)
    study = load_study(path)
    _submit(cli_runner, path)
    jobs = _jobs(study)
    # phantom, index, cache, train, eval, shortcut, report: one job each, in one sbatch call each
    assert len(jobs) == 7 and len(set(jobs.values())) == 7
    seen: dict[str, set[str]] = {}
    t0 = time.time()
    while not all(slurm.state(j) in ("COMPLETED", "FAILED", "CANCELLED") for j in jobs.values()):
        for sid, status in _statuses(study).items():
            seen.setdefault(sid, set()).add(status)
        assert time.time() - t0 < 1200, _statuses(study)
        time.sleep(0.5)
    states = {s: slurm.state(j) for s, j in jobs.items()}
    assert set(states.values()) == {"COMPLETED"}, states
    # status read the real scheduler: the report waited in the queue, training was seen running
    assert "queued" in seen["report"] and "running" in seen[TRAIN_ID], seen
    assert set(_statuses(study).values()) == {"done"}
    a = (inline.out / "report" / "results.csv").read_text()
    b = (study.out / "report" / "results.csv").read_text()
    assert a == b
    result = cli_runner.invoke(app, ["study", "run", str(path), "--device", "cpu", "-q"])
    assert result.exit_code == 0 and "0 job(s) submitted" in result.output, result.output  # all done


# --- status and cancel on real queue and accounting states ---------------------------------------------


@pytest.fixture(params=["accounting", "no accounting"])
def any_slurm(request):
    """Both kinds of cluster: with slurmdbd (sacct answers) and without (squeue alone)."""
    return request.getfixturevalue("slurm" if request.param == "accounting" else "slurm_no_accounting")


def test_a_failed_step_shows_its_error_and_log_and_what_it_stopped(tmp_path, any_slurm, cli_runner):
    cfg = _config("broken", accounting=any_slurm.accounting)
    cfg["datasets"] = {"a": {"adapter": "nih", "root": str(tmp_path / "missing")}}
    path = _write(tmp_path, "s", cfg)
    study = load_study(path)
    _submit(cli_runner, path)
    jobs = _jobs(study)
    states = any_slurm.wait(list(jobs.values()), timeout=900)
    # the index job failed; SLURM cancelled every job after it (--kill-on-invalid-dep): nothing hangs
    assert states.pop(jobs["index/a"]) == "FAILED" and set(states.values()) == {"CANCELLED"}
    assert any_slurm.field(jobs["cache/a/px32"], "Reason") == "DependencyNeverSatisfied"
    rows = _settled(study)
    index = rows.pop("index/a")
    assert index.status == "failed" and "not found" in index.detail and index.job_id == jobs["index/a"]
    assert index.log == read_records(study)["index/a"].stderr and "not found" in Path(index.log).read_text()
    not_run = ("cancelled", "not run: its input index/a failed")
    assert {(r.status, r.detail) for r in rows.values()} == {not_run}
    result = cli_runner.invoke(app, ["study", "status", str(path)])
    assert result.exit_code == 0 and "failed 1  cancelled 5" in result.output, result.output
    assert f"log: {index.log}" in result.output and "not run: its input index/a failed" in result.output


def test_queued_jobs_are_shown_and_cancelled(tmp_path, any_slurm, cli_runner):
    account = ["--account=lab"] if any_slurm.accounting else []
    blocker = any_slurm.run("sbatch", "--parsable", "-c", "2", "-o", "/dev/null", *account, "--wrap",
                           "sleep 600").strip()
    try:
        t0 = time.time()
        while any_slurm.state(blocker) != "RUNNING":  # both CPUs taken: the study's jobs wait
            assert time.time() - t0 < 60
            time.sleep(0.2)
        path = _write(tmp_path, "s", _config("queued", accounting=any_slurm.accounting))
        study = load_study(path)
        _submit(cli_runner, path)
        first = _jobs(study)
        rows = study_status(study)
        assert {(r.status, r.state) for r in rows} == {("queued", "PENDING")}
        assert {r.id: r.job_id for r in rows} == first
        result = cli_runner.invoke(app, ["study", "status", str(path)])
        assert result.exit_code == 0 and result.output.startswith("queued 7"), result.output
        result = cli_runner.invoke(app, ["study", "cancel", str(path)])
        assert result.exit_code == 0 and "cancelled 7 job(s)" in result.output, result.output
        assert {any_slurm.state(j) for j in first.values()} == {"CANCELLED"}  # the scheduler's word
        assert {r.status for r in _settled(study).values()} == {"cancelled"}
        # a rerun submits them again: new jobs, the cancelled ones remembered
        _submit(cli_runner, path)
        second = _jobs(study)
        assert set(second) == set(first) and not set(second.values()) & set(first.values())
        assert read_records(study)["report"].previous == [first["report"]]
        assert {r.status for r in study_status(study)} == {"queued"}
        result = cli_runner.invoke(app, ["study", "cancel", str(path)])
        assert result.exit_code == 0 and "cancelled 7 job(s)" in result.output
    finally:
        any_slurm.run("scancel", blocker)


def test_a_request_the_cluster_refuses_is_one_error_line(tmp_path, slurm, cli_runner):
    """sbatch's own refusal, on one line naming the job and the executor keys: a GPU on a partition
    without any (no --device cpu), an account that does not exist."""
    path = _write(tmp_path, "gpu", _config("gpu", accounting=slurm.accounting))
    result = cli_runner.invoke(app, ["study", "run", str(path), "-q"])  # no --device cpu: eval asks a GPU
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "sbatch refused the job of cxr-gpu-train.a.px32.rand.s0" in result.output, result.output
    assert "Invalid generic resource" in result.output
    cli_runner.invoke(app, ["study", "cancel", str(path)])  # the jobs submitted before the refusal
    if slurm.accounting:
        path = _write(tmp_path, "acct", _config("acct", executor={"account": "nope"}))
        result = cli_runner.invoke(app, ["study", "run", str(path), "--device", "cpu", "-q"])
        assert result.exit_code == 2 and "Invalid account" in result.output, result.output
        assert not read_records(load_study(path))  # refused at the first job: nothing submitted


# --- preemption, time limits, DDP ----------------------------------------------------------------------


def _log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _max_step(run: Path) -> int:
    return max((r["step"] for r in _log(run) if r["kind"] == "step"), default=0)


def _weights(run: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
    return {"last": last, "best": load_file(str(run / "best.safetensors"))}


def _wait_for(what, timeout: float, poll: float = 0.1):
    t0 = time.time()
    while not (value := what()):
        assert time.time() - t0 < timeout, f"waited {timeout:.0f} s"
        time.sleep(poll)
    return value


def test_a_requeued_training_job_resumes_to_the_uninterrupted_weights(
    tmp_path, slurm, cli_runner, torch_one_thread
):
    """``scontrol requeue`` mid-epoch (SIGTERM, KillWait, SIGKILL, back to the queue): the job starts again
    and training resumes from the last checkpoint to the weights of an uninterrupted run, bit for bit."""
    every = 3
    # 67 steps an epoch; the first run goes on for KillWait (5 s) after the requeue: 10 epochs leave room
    train = {"epochs": 10, "batch_size": 4, "checkpoint_every": every, "log_every": 1}
    cfg = _config("rq", patients=120, train=train, accounting=slurm.accounting)
    inline = load_study(_write(tmp_path, "inline", {**cfg, "executor": {"kind": "local"}}))
    run_study(inline, quiet=True, device="cpu", kinds=("train",))
    path = _write(tmp_path, "slurm", cfg)
    study = load_study(path)
    _submit(cli_runner, path, "--only", "train")
    job = _jobs(study)[TRAIN_ID]
    run = study.out / "runs/a/px32/rand/s0"
    _wait_for(lambda: _max_step(run) >= 30, timeout=900)
    slurm.run("scontrol", "requeue", job)
    # the first run is over (its processes gone) and the job waits in the queue for its second start
    _wait_for(lambda: slurm.field(job, "Restarts") == "1" and slurm.state(job) == "PENDING", timeout=300)
    reached = _max_step(run)
    assert slurm.wait([job], timeout=900) == {job: "COMPLETED"}
    starts = [r for r in _log(run) if r["kind"] == "start"]
    assert [r["resumed"] for r in starts] == [False, True]
    lost = reached - starts[1]["step"]
    assert 0 <= lost <= every, (reached, starts[1]["step"])  # at most one checkpoint interval
    print(f"requeued at step {reached}, resumed from step {starts[1]['step']}: {lost} step(s) lost")
    ours, theirs = _weights(run), _weights(inline.out / "runs/a/px32/rand/s0")
    for which in ("last", "best"):
        assert ours[which].keys() == theirs[which].keys()
        assert all(ours[which][k].equal(theirs[which][k]) for k in ours[which]), which
    assert _statuses(study)[TRAIN_ID] == "done"


def test_a_job_out_of_time_is_reported_with_the_fix_and_resumes_with_more(tmp_path, slurm, cli_runner):
    """A 3-minute limit: SLURM signals USR2 90 s before it (checked every 30 s, so 30 to 90 s after the
    start), submitit's handler finds no requeue left (max_requeues 0) and ends the job; status says so
    and names the fix; with more time the resubmitted job resumes training from its checkpoint. (With
    a 1- or 2-minute limit the signal can come before Python installed the handler.)"""
    cfg = _config("short", train={"epochs": 2000, "checkpoint_every": 1, "log_every": 1},  # > 3 minutes
                  executor={"time": 3, "max_requeues": 0}, accounting=slurm.accounting)
    path = _write(tmp_path, "s", cfg)
    study = load_study(path)
    _submit(cli_runner, path, "--only", "train")
    job = _jobs(study)[TRAIN_ID]
    # FAILED: submitit's handler gave up (no requeue left); TIMEOUT: SLURM killed the job at its limit
    # (seen once under heavy load: the handler logged that it gave up, yet training went on)
    ended = slurm.wait([job], timeout=900)[job]
    assert ended in ("FAILED", "TIMEOUT")
    row = _settled(study)[TRAIN_ID]
    assert row.status == "failed", row
    assert ("timed-out too many times" if ended == "FAILED" else "ended TIMEOUT") in row.detail, row.detail
    assert "raise executor.time (now 3) or executor.max_requeues" in row.detail
    assert "resumes (a training run from its checkpoints/last.pt)" in row.detail
    run = study.out / "runs/a/px32/rand/s0"
    done = _max_step(run)
    assert done > 0
    result = cli_runner.invoke(app, ["study", "status", str(path)])
    assert "Fix: raise executor.time" in result.output and f"log: {row.log}" in result.output
    # the fix: more time; the same command resumes
    cfg["executor"]["time"] = 30
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    _submit(cli_runner, path, "--only", "train")
    again = _jobs(study)[TRAIN_ID]
    assert again != job
    _wait_for(lambda: len([r for r in _log(run) if r["kind"] == "start"]) == 2, timeout=600, poll=0.5)
    resumed = [r for r in _log(run) if r["kind"] == "start"][1]
    assert resumed["resumed"] and 0 < resumed["step"] <= done
    result = cli_runner.invoke(app, ["study", "cancel", str(path)])
    assert result.exit_code == 0 and again in result.output


def test_a_two_task_ddp_job_matches_one_process(tmp_path, slurm, cli_runner, torch_one_thread):
    """gpus_per_run: 2 with --device cpu: one job of two tasks (srun), DDP over gloo, the rendezvous from
    SLURM's variables; the loss curve and validation AUROC of one process within docs/study.md's
    tolerance."""
    train = {"epochs": 2, "batch_size": 8, "log_every": 1, "augment": False}
    # 40 patients: 88 training images, a multiple of the 2 processes (else the sampler pads the last
    # batch with repeated images, as DistributedSampler does, and the last step of each epoch differs)
    cfg = _config("ddp", patients=40, train=train, executor={"gpus_per_run": 2},
                  accounting=slurm.accounting)
    inline = load_study(_write(tmp_path, "inline", {**cfg, "executor": {"kind": "local"}}))
    run_study(inline, quiet=True, device="cpu", kinds=("train",))
    path = _write(tmp_path, "slurm", cfg)
    study = load_study(path)
    _submit(cli_runner, path, "--only", "train")
    job = _jobs(study)[TRAIN_ID]
    assert read_records(study)[TRAIN_ID].tasks == 2
    assert slurm.wait([job], timeout=900) == {job: "COMPLETED"}
    assert slurm.field(job, "NumTasks") == "2" and slurm.field(job, "NumCPUs") == "2"
    ddp, one = _log(study.out / "runs/a/px32/rand/s0"), _log(inline.out / "runs/a/px32/rand/s0")
    assert [r["world_size"] for r in ddp if r["kind"] == "start"] == [2]
    # docs/study.md: losses to a relative 1e-4 (float32 sums in another order: 2e-7 in the first epoch,
    # 3e-5 by its 22nd step here), validation AUROC to 1e-6 (identical here)
    for kind, key, tol in (("step", "loss", {"rel": 1e-4}), ("epoch", "val_loss", {"rel": 1e-4}),
                           ("epoch", "val_mean_auroc", {"abs": 1e-6})):
        a, b = [r[key] for r in ddp if r["kind"] == kind], [r[key] for r in one if r["kind"] == kind]
        assert len(a) == len(b) > 0 and a == pytest.approx(b, **tol), key
    doc = yaml.safe_load((study.out / "runs/a/px32/rand/s0/config.yaml").read_text())
    assert doc["derived"]["world_size"] == 2 and doc["derived"]["micro_batch"] == 4
