"""Benchmark: steps as jobs. Two figures, each against a baseline measured in the same run.

1. The tiny demo study (``demo_config(tiny=True, optional=False)``, 25 steps) through the
   ``submitit-local`` executor (every step a fresh subprocess through submitit's LocalExecutor)
   versus the inline runner: both results.csv must be identical; printed are both wall times, their
   ratio and the overhead per step in seconds ((jobs - inline) / steps; ``--parallel 1`` runs the
   jobs one at a time like the inline runner, so the difference is the per-job cost: interpreter
   start, imports, pickling).
2. Planning + submission of the full ``configs/study-dinov3.yaml`` against the fake SLURM of the
   tests (``tests/study/data/fake_slurm.py``, record-only: every sbatch call is a real process that
   records the job): jobs submitted, seconds, seconds per job, and the ratio to planning alone
   (``build_plan``). submitit spaces submissions by at least 0.2 s (its throttle, to spare the
   scheduler), which bounds this figure from below.

Full:   python bench/slurm.py
Smoke:  python bench/slurm.py --smoke      (a 3-step study instead of the demo)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cxrbench.study.demo import demo_config
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.runner import run_study

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "study" / "data" / "fake_slurm.py"
DINOV3 = REPO / "configs" / "study-dinov3.yaml"


def _study(folder: Path, cfg: dict):
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_study(folder / "study.yaml", out=folder / "out")


def jobs_vs_inline(tmp: Path, smoke: bool, parallel: int) -> None:
    cfg, _ = demo_config(tiny=True, optional=False)
    kinds = ("cache",) if smoke else None
    inline = _study(tmp / "inline", cfg)
    t = time.perf_counter()
    s_inline = run_study(inline, quiet=True, device="cpu", kinds=kinds)
    t_inline = time.perf_counter() - t
    cfg["executor"] = {"kind": "submitit-local", "max_parallel": parallel}
    jobs = _study(tmp / "jobs", cfg)
    t = time.perf_counter()
    s_jobs = run_study(jobs, quiet=True, device="cpu", kinds=kinds)
    t_jobs = time.perf_counter() - t
    n = len(s_jobs.executed)
    assert n == len(s_inline.executed), (n, len(s_inline.executed))
    if smoke:
        same = all(
            (inline.out / "cache" / d / "px32" / "images.u8").read_bytes()
            == (jobs.out / "cache" / d / "px32" / "images.u8").read_bytes()
            for d in cfg["datasets"]
        )
        what = "caches"
    else:
        same = (inline.out / "report/results.csv").read_text() == (
            jobs.out / "report/results.csv"
        ).read_text()
        what = "results.csv"
    print(
        f"tiny study, {n} steps: inline {t_inline:.1f} s, submitit-local ({parallel} at a time) "
        f"{t_jobs:.1f} s "
        f"= {t_jobs / t_inline:.1f}x the inline runner; overhead {(t_jobs - t_inline) / n:.2f} s per step; "
        f"{what} {'identical' if same else 'DIFFERENT'}"
    )
    if not same:
        sys.exit(1)


def submission(tmp: Path) -> None:
    env = json.loads(
        subprocess.check_output([sys.executable, str(FAKE), "install", str(tmp / "bin"), str(tmp / "slurm")])
    )
    os.environ.update(env, FAKE_SLURM_RUN="0", CXRBENCH_DATA=str(tmp / "data"))
    study = load_study(DINOV3, out=tmp / "dinov3")
    t = time.perf_counter()
    plan = build_plan(study)
    t_plan = time.perf_counter() - t
    from cxrbench.study.slurm import submit_study

    t = time.perf_counter()
    summary = submit_study(study, quiet=True)
    t_submit = time.perf_counter() - t
    n = len(summary.submitted)
    deferred = sum(1 for s in plan.steps if s.deferred)
    print(
        f"study-dinov3: {len(plan.steps)} steps ({deferred} known after indexing) planned in {t_plan:.2f} s; "
        f"{n} jobs submitted to the fake SLURM in {t_submit:.1f} s ({t_submit / max(n, 1):.2f} s per job, "
        f"{t_submit / (0.2 * max(n, 1)):.2f}x submitit's own floor of 0.2 s per job; planning alone is "
        f"{t_submit / t_plan:.0f}x faster)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a 3-step study instead of the 25-step tiny demo")
    ap.add_argument("--parallel", type=int, default=1, help="submitit-local: jobs at once (default 1)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the jobs and this process: the same threads
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ["PYTHONPATH"] = str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    print(f"machine: {os.cpu_count()} CPUs (shared machines make every figure slower)")
    with tempfile.TemporaryDirectory() as tmp:
        jobs_vs_inline(Path(tmp) / "a", args.smoke, args.parallel)
        submission(Path(tmp) / "b")


if __name__ == "__main__":
    main()
