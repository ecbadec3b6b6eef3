"""Benchmark: the SLURM executor on a real one-node SLURM, each figure against a baseline of the same run.

The cluster is ``scripts/slurm_cluster.py``'s (one node, 2 CPUs, no GPU, slurmdbd + MariaDB when
installed), started under a temp folder for this run and stopped at its end; every job runs
``--device cpu`` on one thread (``cpus_per_gpu: 1``, so two jobs run at once on the two CPUs), the
inline baselines on one thread too.

1. A study end to end: the tiny demo study (``demo_config(tiny=True, optional=False)``: phantom data,
   random, domain-pretrained and self-supervised arms, seeds, label budgets, evaluation, external
   validation, comparisons, pooling, report) inline, then with ``--executor slurm`` (every step one
   job with afterok dependencies). Printed: jobs, both wall times (the SLURM one from the submission
   to the report's marker) and their ratio; results.csv must be identical.
2. Preemption: one training run (20 epochs of 67 steps, ``checkpoint_every: 3``) requeued with
   ``scontrol requeue`` once it logged step 30 and again after step 700; each time the job is killed
   (SIGTERM, ``KillWait`` 5 s, SIGKILL), waits in the queue (requeue delay: ``cred_expire``, 10 s
   here, 120 s by default) and resumes from ``checkpoints/last.pt``. Printed: the steps each requeue
   lost (the last step logged before the kill minus the step resumed from; want at most 3, one
   checkpoint interval), the wall time of the requeued run against an uninterrupted one, and the
   largest absolute difference of any weight (last.pt and best.safetensors) to the uninterrupted
   inline run (want 0).

Needs root and Debian's ``slurmctld slurmd slurm-client munge`` (``slurmdbd mariadb-server`` for sacct).

Full:   python bench/slurm_cluster.py
Smoke:  python bench/slurm_cluster.py --smoke   (the tests' 7-job study; one requeue, 10 epochs)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from cxrbench.study.demo import demo_config
from cxrbench.study.jobs import read_records, study_status
from cxrbench.study.load import load_study
from cxrbench.study.runner import run_study

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_cluster.py"
EXECUTOR = {"kind": "slurm", "partition": "cpu", "gpus_per_run": 1, "cpus_per_gpu": 1, "time": 30,
            "step_time": 15, "max_requeues": 3}
SMALL = {
    "name": "small",
    "datasets": {"a": {"adapter": "nih", "labels": "cardiomegaly,pleural_effusion",
                       "phantom": {"patients": 40, "size": 32, "site": "A", "seed": 1}}},
    "preprocess": {"px32": {"size": 32}},
    "inits": {"rand": {"init": "random-vit-test"}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 1e-3, "patience": 0, "workers": 0, "deterministic": True},
    "evaluation": {"bootstrap": 10},
}
TRAIN_ID = "train/a/px32/rand/s0"


def _cluster_module() -> Any:
    spec = importlib.util.spec_from_file_location("slurm_cluster", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _study(folder: Path, cfg: dict) -> Any:
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_study(folder / "study.yaml")


def _state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True, timeout=60).stdout.strip()
    return out.split()[0] if out else "UNKNOWN"


def _field(job_id: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         timeout=60).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith(name + "=")), "")


def _wait(until, timeout: float, poll: float = 0.2) -> None:
    t0 = time.time()
    while not until():
        if time.time() - t0 > timeout:
            sys.exit(f"timed out after {timeout:.0f} s")
        time.sleep(poll)


def study_vs_inline(tmp: Path, cfg: dict, account: dict) -> None:
    inline = _study(tmp / "inline", cfg)
    t = time.perf_counter()
    run_study(inline, quiet=True, device="cpu")
    t_inline = time.perf_counter() - t
    study = _study(tmp / "slurm", {**cfg, "executor": {**EXECUTOR, **account}})
    t = time.perf_counter()
    run_study(study, quiet=True, device="cpu")  # submits and returns

    def finished() -> bool:
        rows = study_status(study)
        bad = [r for r in rows if r.status in ("failed", "cancelled")]
        if bad:
            sys.exit(f"{bad[0].id} {bad[0].status}: {bad[0].detail} (log: {bad[0].log})")
        return all(r.status == "done" for r in rows)

    _wait(finished, timeout=3600, poll=1.0)
    t_slurm = time.perf_counter() - t
    records = read_records(study)
    jobs = sum(1 + len(r.previous) for r in records.values())
    same = (inline.out / "report/results.csv").read_text() == (study.out / "report/results.csv").read_text()
    steps = len([r for r in study_status(study)])
    replan = "including the replan job, " if "_replan" in records else ""
    print(f"study {cfg['name']}: {steps} steps as {jobs} SLURM jobs ({replan}2 CPUs, one thread per job): "
          f"inline {t_inline:.1f} s, SLURM {t_slurm:.1f} s = {t_slurm / t_inline:.2f}x the inline runner; "
          f"results.csv {'identical' if same else 'DIFFERENT'}")
    _breakdown([r.job_id for r in records.values()], t_slurm)
    if not same:
        sys.exit(1)


def _breakdown(job_ids: list[str], wall: float) -> None:
    """Where the SLURM wall time went (sacct: eligible -> start is the wait in the queue, for a free CPU
    and the scheduler's pass; start -> end the job's: interpreter, imports, the step)."""
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,Eligible,Start,End", "-j", ",".join(job_ids)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    rows = [line.split("|") for line in out.stdout.splitlines()]
    rows = [r for r in rows if len(r) == 4 and "Unknown" not in r]  # a job still exiting has no end yet
    if out.returncode or not rows:
        return  # no accounting
    from datetime import datetime

    def t(x: str) -> float:
        return datetime.fromisoformat(x).timestamp()

    waits = [t(s) - t(e) for _, e, s, _ in rows]
    runs = [t(end) - t(s) for _, _, s, end in rows]
    print(f"  per job (sacct, whole seconds): {sum(waits) / len(rows):.1f} s queued once eligible "
          f"(a free CPU, the scheduler), {sum(runs) / len(rows):.1f} s running (interpreter, imports, "
          f"the step); {sum(runs):.0f} job-seconds in {wall:.0f} s wall on 2 CPUs")


def _log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _max_step(run: Path) -> int:
    return max((r["step"] for r in _log(run) if r["kind"] == "step"), default=0)


def _weight_diff(a: Path, b: Path) -> float:
    import torch
    from safetensors.torch import load_file

    worst = 0.0
    def last(run: Path) -> dict:
        return torch.load(run / "checkpoints/last.pt", map_location="cpu", weights_only=True)["model"]

    for load in (last, lambda r: load_file(str(r / "best.safetensors"))):
        x, y = load(a), load(b)
        assert x.keys() == y.keys()
        worst = max([worst, *((x[k].double() - y[k].double()).abs().max().item() for k in x)])
    return worst


def requeue(tmp: Path, account: dict, at: list[int], epochs: int) -> None:
    every = 3
    cfg = {**SMALL, "name": "rq"}
    cfg["datasets"] = {"a": {**SMALL["datasets"]["a"], "phantom": {**SMALL["datasets"]["a"]["phantom"],
                                                                  "patients": 120}}}
    cfg["train"] = {**SMALL["train"], "epochs": epochs, "batch_size": 4, "checkpoint_every": every,
                    "log_every": 1}
    inline = _study(tmp / "inline", cfg)
    run_study(inline, quiet=True, device="cpu", kinds=("cache",))
    t = time.perf_counter()
    run_study(inline, quiet=True, device="cpu", kinds=("train",))
    t_plain = time.perf_counter() - t
    study = _study(tmp / "slurm", {**cfg, "executor": {**EXECUTOR, **account}})
    run_study(study, quiet=True, device="cpu", kinds=("cache",), executor="local")  # only training is timed
    run = study.out / "runs/a/px32/rand/s0"
    t = time.perf_counter()
    run_study(study, quiet=True, device="cpu", kinds=("train",))
    job = read_records(study)[TRAIN_ID].job_id
    lost = []
    for k, step in enumerate(at, 1):
        _wait(lambda step=step: _max_step(run) >= step, timeout=600, poll=0.05)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
        _wait(lambda k=k: _field(job, "Restarts") == str(k) and _state(job) == "PENDING", timeout=120)
        reached = _max_step(run)
        _wait(lambda k=k: len([r for r in _log(run) if r["kind"] == "start"]) == k + 1, timeout=600)
        resumed = [r for r in _log(run) if r["kind"] == "start"][k]["step"]
        lost.append((reached, resumed))
    _wait(lambda: _state(job) not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"), timeout=600)
    t_job = time.perf_counter() - t
    if _state(job) != "COMPLETED":
        sys.exit(f"the training job ended {_state(job)}")
    diff = _weight_diff(run, inline.out / "runs/a/px32/rand/s0")
    steps = " ".join(f"{r - s} (requeued at step {r}, resumed from {s})" for r, s in lost)
    print(f"requeue: {len(at)} x scontrol requeue mid-epoch, checkpoint_every {every}: steps lost {steps}; "
          f"max steps lost {max(r - s for r, s in lost)} (want <= {every}); training job with its requeues "
          f"{t_job:.1f} s vs {t_plain:.1f} s uninterrupted inline ({t_job / t_plain:.2f}x); largest weight "
          f"difference to the uninterrupted run {diff:.3g} (want 0)")
    if diff != 0 or max(r - s for r, s in lost) > every:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="the 7-job study instead of the demo; one requeue")
    args = ap.parse_args()
    mod = _cluster_module()
    gone = mod.missing()
    if os.getuid() != 0 or gone:
        sys.exit(f"needs root and SLURM ({', '.join(gone) or 'not root'}): see scripts/slurm_cluster.py")
    os.environ["OMP_NUM_THREADS"] = "1"  # the jobs (they inherit this environment) and this process
    os.environ["PYTHONPATH"] = str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    import torch

    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs (shared machines make every figure slower)")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = mod.Cluster(Path(tmp) / "cluster")
        cluster.start()
        os.environ.update(cluster.env)
        account = {"account": mod.ACCOUNT} if cluster.accounting else {}
        acct = "with" if cluster.accounting else "without"
        print(f"cluster: 1 node, {cluster.cpus} CPUs, {acct} accounting")
        try:
            if args.smoke:
                cfg = dict(SMALL)
            else:
                cfg, _ = demo_config(tiny=True, optional=False)
            study_vs_inline(Path(tmp) / "study", cfg, account)
            requeue(Path(tmp) / "requeue", account, *(([30], 10) if args.smoke else ([30, 700], 20)))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
