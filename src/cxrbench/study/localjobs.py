"""The ``submitit-local`` executor: every step one subprocess through submitit's ``LocalExecutor``.

The same jobs as on SLURM (:class:`~cxrbench.study.jobs.StepJob`: pickled study, step id and key;
torchrun's variables exported for a multi-GPU run), run on this machine. submitit's local executor
has no dependencies, so this driver provides them: it starts a step only once every step it reads
is done, up to ``executor.max_parallel`` at a time, and re-plans after each one (the steps known
only after indexing join as soon as they are known). It blocks until the study is done, like the
inline runner, and gives the same results; it exists to try a cluster setup on one machine, and for
steps that must not share a process (each job is a fresh interpreter).
"""

from __future__ import annotations

import time
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.progress import console
from cxrbench.study.config import LoadedStudy
from cxrbench.study.execute import RunSummary, selected_steps
from cxrbench.study.jobs import StepJob, new_record, read_records
from cxrbench.study.plan import build_plan
from cxrbench.study.queue import require_submitit
from cxrbench.study.runtime_config import time_minutes
from cxrbench.study.state import read_marker
from cxrbench.study.steps import Plan, Step

_POLL_S = 0.2


def _parameters(study: LoadedStudy, step: Step) -> dict[str, Any]:
    spec = study.config.executor
    train = step.kind in ("train", "pretrain", "tune")
    gpus = (
        spec.gpus_per_run if train else min(1, spec.gpus_per_run) if step.kind in ("eval", "external") else 0
    )
    return {
        "timeout_min": time_minutes(spec.time if train else spec.step_time),
        "tasks_per_node": max(1, spec.gpus_per_run) if train else 1,
        "gpus_per_node": gpus,
        "setup": list(spec.setup),
    }


def _ready(plan: Plan, steps: list[Step], busy: set[str], failed: set[str]) -> list[Step]:
    out = []
    for s in steps:
        if s.status == "done" or s.deferred or s.id in busy or s.id in failed:
            continue
        if any(d in failed for d in plan.closure({s.id}) - {s.id}):
            continue
        if all(plan.by_id[d].status == "done" for d in s.deps):
            out.append(s)
    return out


def drive_local(
    study: LoadedStudy,
    *,
    shard: tuple[int, int] | None = None,
    kinds: tuple[str, ...] | None = None,
    device: str | None = None,
    quiet: bool = False,
    keep_going: bool = False,
) -> RunSummary:
    """Run the study's steps as local submitit jobs, in dependency order; returns what ran."""
    submitit = require_submitit()
    say = (lambda *a, **k: None) if quiet else console.print
    t0 = time.perf_counter()
    study.out.mkdir(parents=True, exist_ok=True)
    ex = submitit.LocalExecutor(folder=str(study.layout.job_logs))
    limit = study.config.executor.max_parallel
    summary = RunSummary()
    running: dict[str, tuple[Any, float]] = {}
    finished: set[str] = set()
    failed: set[str] = set()
    plan = build_plan(study)
    summary.skipped = [s.id for s in selected_steps(plan, shard, kinds) if s.status == "done"]
    stop = False
    while True:
        steps = selected_steps(plan, shard, kinds)
        if not stop:
            for s in _ready(plan, steps, set(running) | finished, failed)[: max(0, limit - len(running))]:
                ex.update_parameters(**_parameters(study, s))
                job = ex.submit(StepJob(study, s.id, s.key, device))
                new_record(
                    study,
                    s.id,
                    s.key,
                    s.kind,
                    "submitit-local",
                    job,
                    [],
                    job.num_tasks,
                    read_records(study).get(s.id),
                )
                running[s.id] = (job, time.perf_counter())
                say(
                    f"[bold cyan]started[/bold cyan]  {s.kind:<8} {s.id.split('/', 1)[-1]}  "
                    f"(job {job.job_id})",
                    highlight=False,
                )
        if not running:
            break
        done = _wait_any(running)
        for sid in done:
            job, t = running.pop(sid)
            finished.add(sid)
            err = job.exception()
            if err is None:
                (summary.executed if job.result() else summary.skipped).append(sid)
                say(f"  done     {sid} in {time.perf_counter() - t:.1f} s", highlight=False)
                continue
            failed.add(sid)
            m = read_marker(study.out, sid)
            summary.failed[sid] = (
                str(m.get("error"))
                if m and m.get("status") == "failed"
                else (str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__)
            )
            say(f"  [red]failed[/red]   {sid}: {summary.failed[sid]}", highlight=False)
            stop = stop or not keep_going
        plan = build_plan(study)
    summary.blocked = [
        s.id for s in selected_steps(plan, shard, kinds) if s.status != "done" and s.id not in failed
    ]
    summary.seconds = time.perf_counter() - t0
    summary.plan = plan
    if summary.failed and not keep_going:
        sid, msg = next(iter(summary.failed.items()))
        raise InputError(
            f"step {sid} failed: {msg}",
            where=str(study.path),
            fix=f"see its log ({read_records(study)[sid].stderr}); fix it and run again",
        )
    if summary.blocked and not summary.failed:
        raise InputError(
            f"{len(summary.blocked)} step(s) could not run: {', '.join(summary.blocked[:5])}",
            where=str(study.path),
            fix="their inputs are missing; run the steps they need first",
        )
    return summary


def _wait_any(running: dict[str, tuple[Any, float]]) -> list[str]:
    while True:
        done = [sid for sid, (job, _) in running.items() if job.done()]
        if done:
            return done
        time.sleep(_POLL_S)
