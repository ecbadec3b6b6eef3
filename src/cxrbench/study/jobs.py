"""Steps as jobs: what the ``slurm`` and ``submitit-local`` executors share.

Each step of the plan becomes one submitit job running :class:`StepJob` (the step, by id and key, on
the pickled study): the job re-plans, checks that its inputs are done and runs the step through the
runner's marker-and-lock path (:func:`cxrbench.study.runner.execute_step`), exactly as the inline
runner would. A job with several tasks (a multi-GPU or multi-node training run) first exports
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
from SLURM's through submitit's helper, so the same DDP code runs. :meth:`StepJob.checkpoint` is
submitit's preemption / time-out hook: the job is requeued with the same step, and training resumes
from ``checkpoints/last.pt``.

``OUT/.jobs/<step id>.json`` records the job of each step (id, key, log files, dependencies, earlier
ids); :func:`study_status` joins them with the markers and the scheduler's states, and
:func:`cancel_study` cancels what was submitted.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.common.provenance import now_iso
from cxrbench.study.config import LoadedStudy
from cxrbench.study.execute import execute_step
from cxrbench.study.layout import JOB_LOGS, REPLAN_JOB
from cxrbench.study.plan import build_plan
from cxrbench.study.queue import ALIVE, CANCELLED, QUEUED, RUNNING, cancel_jobs, job_states, require_submitit
from cxrbench.study.state import read_marker

# the statuses `cxrbench study status` reports
STATUSES: tuple[str, ...] = (
    "done",
    "running",
    "queued",
    "failed",
    "cancelled",
    "pending",
    "stale",
    "deferred",
)


# --- what a job runs -----------------------------------------------------------------------------------


class StepJob:
    """One step of a study as a submitit callable (picklable: the study, the step id and key)."""

    def __init__(self, study: LoadedStudy, step_id: str, key: str, device: str | None = None) -> None:
        self.study, self.step_id, self.key, self.device = study, step_id, key, device

    def __call__(self) -> bool:
        export_torch_env()
        # not quiet: the job's output file is its log (progress lines of the cache step, training epochs)
        return execute_step(self.study, self.step_id, key=self.key, device=self.device, quiet=False)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or timed out: requeue the same step (a training run resumes from its last.pt)."""
        submitit = require_submitit()
        return submitit.helpers.DelayedSubmission(StepJob(self.study, self.step_id, self.key, self.device))


def export_torch_env() -> None:
    """In a job with several tasks: torchrun's variables from the scheduler's (submitit's helper)."""
    submitit = require_submitit()
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call): nothing to set
        return
    if env.num_tasks > 1:
        # every task sees its node's GPUs; the device is cuda:LOCAL_RANK, as under torchrun
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


# --- job records ---------------------------------------------------------------------------------------


@dataclass
class JobRecord:
    """The job of one step (``OUT/.jobs/<step id>.json``)."""

    step: str
    key: str
    kind: str
    executor: str
    job_id: str
    submitted: str
    stdout: str
    stderr: str
    deps: list[str] = field(default_factory=list)
    tasks: int = 1
    previous: list[str] = field(default_factory=list)
    state: str = "SUBMITTED"


def write_record(study: LoadedStudy, rec: JobRecord) -> None:
    atomic_write_json(study.layout.job_record(rec.step), asdict(rec))


def read_records(study: LoadedStudy) -> dict[str, JobRecord]:
    """Every job record of the study folder, by step id (unreadable ones are skipped)."""
    root = study.layout.jobs_dir
    out: dict[str, JobRecord] = {}
    if not root.is_dir():
        return out
    logs = root / JOB_LOGS
    for path in root.rglob("*.json"):
        if logs in path.parents:
            continue
        try:
            rec = JobRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        out[rec.step] = rec
    return out


def new_record(
    study: LoadedStudy,
    step: str,
    key: str,
    kind: str,
    executor: str,
    job: Any,
    deps: list[str],
    tasks: int,
    old: JobRecord | None,
) -> JobRecord:
    """The record of a job just submitted (its log files from submitit's job paths)."""
    paths = job.paths if job.num_tasks == 1 else job.task(0).paths
    previous = (
        [*old.previous, old.job_id]
        if old is not None and old.job_id != job.job_id
        else list(old.previous)
        if old is not None
        else []
    )
    rec = JobRecord(
        step=step,
        key=key,
        kind=kind,
        executor=executor,
        job_id=str(job.job_id),
        submitted=now_iso(),
        stdout=str(paths.stdout),
        stderr=str(paths.stderr),
        deps=list(deps),
        tasks=tasks,
        previous=previous,
    )
    write_record(study, rec)
    return rec


# --- running a study through jobs ----------------------------------------------------------------------


# --- status and cancel ---------------------------------------------------------------------------------


@dataclass
class StepStatus:
    """One line of ``cxrbench study status``."""

    id: str
    kind: str
    status: str
    job_id: str | None = None
    state: str | None = None
    detail: str | None = None
    log: str | None = None


def _state(raw: str | None) -> str | None:
    return raw.split()[0].upper() if raw else None


def study_status(study: LoadedStudy) -> list[StepStatus]:
    """Every step: done / running / queued / failed / cancelled / pending / stale / deferred, with its job
    and, for a failure, the error and the log file."""
    plan = build_plan(study)
    records = read_records(study)
    slurm_ids = [r.job_id for r in records.values() if r.executor == "slurm"]
    states = (job_states(slurm_ids) if slurm_ids else None) or {}
    rows: list[StepStatus] = []
    failed_input: dict[str, str] = {}  # step id -> the failed step it (transitively) reads
    for s in plan.steps:
        rec = records.get(s.id)
        rec = rec if rec is not None and rec.key == s.key else None
        m = read_marker(study.out, s.id)
        m = m if m is not None and m.get("key") == s.key else None
        st = _state(states.get(rec.job_id)) if rec is not None else None
        if rec is not None and st is not None and st != rec.state:
            rec.state = st  # the record keeps the last state the scheduler reported
            write_record(study, rec)
        row = StepStatus(
            s.id, s.kind, s.status, rec.job_id if rec else None, st, log=rec.stderr if rec else None
        )
        if s.status == "done" or s.deferred:
            row.log = None
        elif st in RUNNING or (st is None and m is not None and m.get("status") == "running" and _live(m)):
            row.status = "running"
        elif st in QUEUED:
            row.status = "queued"
        elif m is not None and m.get("status") == "failed":
            row.status, row.detail = "failed", str(m.get("error"))
            if row.detail.startswith("UncompletedJobError"):  # submitit's handler: no requeue left
                n = study.config.executor.max_requeues
                row.detail += " " + _time_fix(study, s.kind, f"hit its time limit more often than "
                                              f"executor.max_requeues ({n}) allows")
        elif m is not None and m.get("status") == "running" and st is None:
            row.status, row.detail = (
                "failed",
                f"interrupted: process {m.get('pid')} on {m.get('host')} is gone",
            )
        elif st in CANCELLED or (rec is not None and _state(rec.state) in CANCELLED):
            row.status, row.detail = (
                "cancelled",
                "cancelled" + (" (cxrbench study cancel)" if st is None else ""),
            )
        elif st is not None and rec is not None:
            row.status, row.detail = "failed", f"job {rec.job_id} ended {st} without finishing the step"
            if st == "TIMEOUT":
                row.detail = (f"job {rec.job_id} ended TIMEOUT (killed at its time limit). "
                              + _time_fix(study, s.kind, ""))
        if row.status == "failed":
            failed_input[s.id] = s.id
        elif rec is not None and row.status in ("cancelled", "pending") and st not in ALIVE:
            # --kill-on-invalid-dep: SLURM cancelled the job because an input's job failed
            root = next((failed_input[d] for d in s.deps if d in failed_input), None)
            if root is not None:
                failed_input[s.id] = root
                row.status, row.detail = "cancelled", f"not run: its input {root} failed"
        rows.append(row)
    replan = records.get(REPLAN_JOB)
    st = _state(states.get(replan.job_id)) if replan is not None else None
    if replan is not None and st not in (None, "COMPLETED"):  # the job that submits the deferred steps
        status = "queued" if st in QUEUED else "running" if st in RUNNING else "failed"
        status = "cancelled" if st in CANCELLED else status
        rows.append(StepStatus(REPLAN_JOB, "replan", status, replan.job_id, st, log=replan.stderr))
    return rows


def _time_fix(study: LoadedStudy, kind: str, what: str) -> str:
    """The fix of a job that ran out of time: more time, or resubmit (training resumes)."""
    key, value = study.config.executor.time_limit(kind)
    return (f"{'The job ' + what + '. ' if what else ''}Fix: raise executor.{key} (now {value}) or "
            "executor.max_requeues, then run `cxrbench study run --executor slurm` again: it resumes (a "
            "training run from its checkpoints/last.pt)")


def _live(marker: dict[str, Any]) -> bool:
    """A ``running`` marker's process: alive, or on another host (cannot tell: assume alive)."""
    if marker.get("host") != platform.node():
        return True
    try:
        os.kill(int(marker.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OSError):
        return True
    return True


def format_status(rows: list[StepStatus]) -> str:
    """Counts per status, then one line per step that is not done (failures with their log)."""
    counts = {k: sum(1 for r in rows if r.status == k) for k in STATUSES}
    lines = ["  ".join(f"{k} {v}" for k, v in counts.items() if v) or "no steps", ""]
    width = max((len(r.id) for r in rows), default=10)
    for r in rows:
        if r.status == "done":
            continue
        job = f"job {r.job_id}" if r.job_id else ""
        lines.append(f"{r.status:<9} {r.id:<{width}}  {job}".rstrip())
        if r.detail and r.status in ("failed", "cancelled"):
            lines.append(f"{'':<9} {'':<{width}}  {r.detail}")
        if r.log and r.status == "failed":
            lines.append(f"{'':<9} {'':<{width}}  log: {r.log}")
    return "\n".join(lines).rstrip()


def cancel_study(study: LoadedStudy) -> list[str]:
    """Cancel every job this study folder's records name that is still queued or running; returns the ids."""
    records = [r for r in read_records(study).values() if r.executor == "slurm"]
    states = job_states([r.job_id for r in records]) if records else {}
    if states is None:
        raise InputError(
            "neither sacct nor squeue answered",
            where="cxrbench study cancel",
            fix="run it where SLURM's commands are available (the login node)",
        )
    alive = [r for r in records if _state(states.get(r.job_id)) in ALIVE]
    cancel_jobs([r.job_id for r in alive])
    for r in alive:
        r.state = "CANCELLED"
        write_record(study, r)
    return [r.job_id for r in alive]
