"""The SLURM executor: every step of the plan one submitit job, with afterok dependencies.

:func:`submit_study` walks the plan in dependency order and submits each step that is not done
(nothing done is resubmitted, and a step whose job is still queued or running keeps that job) with
``--dependency=afterok:<the jobs of its inputs>``, so SLURM runs caches before runs before
evaluations before comparisons before the report. A training run takes ``nodes_per_run`` nodes x
``gpus_per_run`` GPUs as one job with one task per GPU (DDP, rendezvous from SLURM's environment);
``--requeue`` and submitit's USR2 handler requeue a preempted or timed-out job, which resumes from
``checkpoints/last.pt``; ``--kill-on-invalid-dep=yes`` cancels the jobs downstream of a failure, so a
rerun of ``cxrbench study run --executor slurm`` resubmits exactly what is left.

Steps whose settings are known only once the indexes exist (a ``domain:`` arm's label sets) are
submitted by one more job, after the index jobs, that runs this same submission on the cluster
(:class:`ReplanJob`; compute nodes must be allowed to call ``sbatch``).

Job states come from ``sacct`` (through submitit's parser), else ``squeue``.
"""

from __future__ import annotations

import time
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_lock
from cxrbench.common.progress import console
from cxrbench.study.config import LoadedStudy
from cxrbench.study.execute import RunSummary, selected_steps
from cxrbench.study.jobs import StepJob, new_record, read_records
from cxrbench.study.layout import REPLAN_JOB
from cxrbench.study.plan import build_plan
from cxrbench.study.queue import ALIVE, job_states, require_submitit
from cxrbench.study.runtime_config import ExecutorSpec, time_minutes
from cxrbench.study.state import read_marker
from cxrbench.study.steps import Step

_GPU_KINDS = ("train", "pretrain", "ssl", "tune")
_ONE_GPU_KINDS = ("eval", "external")
_RESOLVES_DEFERRED = ("phantom", "index")  # a deferred step is known once these are done
_SUBMIT_LOCK = "_submit"


class ReplanJob:
    """Submits the steps known only once the indexes exist (a ``domain:`` arm's label sets)."""

    def __init__(
        self,
        study: LoadedStudy,
        shard: tuple[int, int] | None,
        kinds: tuple[str, ...] | None,
        device: str | None,
    ) -> None:
        self.study, self.shard, self.kinds, self.device = study, shard, kinds, device

    def __call__(self) -> list[str]:
        submitit = require_submitit()
        with submitit.helpers.clean_env():  # the new jobs must not inherit this job's SLURM variables
            summary = submit_study(
                self.study, shard=self.shard, kinds=self.kinds, device=self.device, quiet=True
            )
        return list(summary.submitted.values())


def sbatch_parameters(spec: ExecutorSpec, kind: str, name: str, deps: list[str]) -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters of one step's job (every key set, None = no flag)."""
    gpus = spec.gpus_per_run
    if kind in _GPU_KINDS:
        nodes, tasks, gpn, cpus, limit = spec.nodes_per_run, max(1, gpus), gpus, spec.cpus_per_gpu, spec.time
    elif kind in _ONE_GPU_KINDS:
        nodes, tasks, gpn, cpus, limit = 1, 1, min(1, gpus), spec.cpus_per_gpu, spec.step_time
    else:  # index, cache, compare, pooled, report, replan: CPUs only
        nodes, tasks, gpn, cpus, limit = 1, 1, 0, spec.cpus_per_gpu * max(1, gpus), spec.step_time
    extra = {k.lstrip("-").replace("_", "-"): v for k, v in spec.extra.items() if v is not False}
    return {
        "job_name": name,
        "partition": spec.partition,
        "account": spec.account,
        "qos": spec.qos,
        "constraint": spec.constraint,
        "nodes": nodes,
        "ntasks_per_node": tasks,
        "gpus_per_node": gpn or None,
        "cpus_per_task": cpus,
        "mem": spec.mem,
        "time": time_minutes(limit),
        "setup": list(spec.setup) or None,
        "dependency": "afterok:" + ":".join(deps) if deps else None,
        "additional_parameters": {"requeue": True, "kill-on-invalid-dep": "yes", **extra},
    }


def _executor(study: LoadedStudy, spec: ExecutorSpec) -> Any:
    submitit = require_submitit()
    try:
        return submitit.SlurmExecutor(folder=str(study.layout.job_logs), max_num_timeout=spec.max_requeues)
    except RuntimeError as err:  # submitit: no srun on PATH
        raise InputError(
            f"no SLURM on this machine ({err})",
            where="--executor slurm",
            fix="submit from the cluster's login node, or use --executor local / submitit-local",
        ) from None


def _submit(ex: Any, spec: ExecutorSpec, kind: str, name: str, deps: list[str], fn: Any) -> Any:
    try:
        ex.update_parameters(**sbatch_parameters(spec, kind, name, deps))
        return ex.submit(fn)
    except Exception as err:  # sbatch refused it (bad partition, account, ...): its message, one line
        text = " ".join(str(err).split())[:400]
        raise InputError(
            f"sbatch refused the job of {name}: {text}",
            where="executor",
            fix="check partition, account, qos and the other executor keys",
        ) from None


def submit_study(
    study: LoadedStudy,
    *,
    shard: tuple[int, int] | None = None,
    kinds: tuple[str, ...] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> RunSummary:
    """Submit every step of this invocation that is not done and has no live job; returns at once.

    ``summary.submitted`` maps step ids to the new job ids, ``summary.kept`` the steps whose queued or
    running job was kept, ``summary.skipped`` the done steps, ``summary.blocked`` the steps whose inputs
    are neither done nor submitted (e.g. another shard's).
    """
    t0 = time.perf_counter()
    study.out.mkdir(parents=True, exist_ok=True)
    with file_lock(study.layout.lock(_SUBMIT_LOCK)):  # one submission at a time per study folder
        return _submit_all(study, shard, kinds, device, quiet, t0)


def _submit_all(study: LoadedStudy, shard: tuple[int, int] | None, kinds: tuple[str, ...] | None,
                device: str | None, quiet: bool, t0: float) -> RunSummary:
    spec = study.config.executor
    say = (lambda *a, **k: None) if quiet else console.print
    ex = _executor(study, spec)
    plan = build_plan(study)
    steps = selected_steps(plan, shard, kinds)
    records = read_records(study)
    states = job_states([r.job_id for r in records.values()])
    summary = RunSummary(plan=plan)
    job_of: dict[str, str] = {}
    deferred: list[Step] = []
    prefix = f"cxr-{study.config.name}-"
    for s in steps:
        if s.status == "done":
            summary.skipped.append(s.id)
            continue
        if s.deferred:
            deferred.append(s)
            continue
        old = records.get(s.id)
        if old is not None and old.key == s.key and _alive(study, s, old.job_id, states):
            job_of[s.id] = old.job_id
            summary.kept[s.id] = old.job_id
            continue
        deps, missing = [], []
        for d in s.deps:
            if plan.by_id[d].status != "done":
                (deps.append(job_of[d]) if d in job_of else missing.append(d))
        if missing:
            summary.blocked.append(s.id)
            continue
        fn = StepJob(study, s.id, s.key, device)
        job = _submit(ex, spec, s.kind, prefix + s.id.replace("/", "."), deps, fn)
        new_record(study, s.id, s.key, s.kind, "slurm", job, deps, _tasks(spec, s.kind), old)
        job_of[s.id] = job.job_id
        summary.submitted[s.id] = job.job_id
        say(
            f"  submitted {s.id:<58} job {job.job_id}" + (f"  after {','.join(deps)}" if deps else ""),
            highlight=False,
            soft_wrap=True,
        )
    if deferred:
        waits = [job_of[s.id] for s in steps if s.kind in _RESOLVES_DEFERRED and s.id in job_of]
        old = records.get(REPLAN_JOB)
        if waits and old is not None and sorted(old.deps) == sorted(waits) and _alive_id(old.job_id, states):
            summary.kept[REPLAN_JOB] = old.job_id  # the job that submits them is still waiting
        elif waits:
            job = _submit(
                ex, spec, "replan", prefix + "replan", waits, ReplanJob(study, shard, kinds, device)
            )
            new_record(study, REPLAN_JOB, "", "replan", "slurm", job, waits, 1, old)
            summary.submitted[REPLAN_JOB] = job.job_id
            say(
                f"  submitted {len(deferred)} step(s) known after indexing: job {job.job_id} submits them "
                f"after {','.join(waits)}",
                highlight=False,
                soft_wrap=True,
            )
        else:
            summary.blocked += [s.id for s in deferred]
    summary.seconds = time.perf_counter() - t0
    return summary


def _tasks(spec: ExecutorSpec, kind: str) -> int:
    return spec.nodes_per_run * max(1, spec.gpus_per_run) if kind in _GPU_KINDS else 1


def _alive(study: LoadedStudy, step: Step, job_id: str, states: dict[str, str] | None) -> bool:
    """Is the step's job still queued or running? Without a scheduler answer: yes, unless its marker
    says it failed (never submit a step twice on a guess)."""
    if states is None:
        m = read_marker(study.out, step.id)
        return not (m is not None and m.get("key") == step.key and m.get("status") == "failed")
    return _alive_id(job_id, states)


def _alive_id(job_id: str, states: dict[str, str] | None) -> bool:
    raw = (states or {}).get(job_id)
    return raw is not None and raw.split()[0].upper() in ALIVE
