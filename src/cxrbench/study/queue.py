"""What the scheduler says: SLURM job states (``sacct`` through submitit's parser, else ``squeue``),
cancelling jobs, and the submitit import every job executor needs."""

from __future__ import annotations

import subprocess
from typing import Any

from cxrbench.common.errors import InputError

# scheduler states (sacct / squeue; the first word: "CANCELLED by 123" -> CANCELLED)
QUEUED = frozenset(
    {
        "PENDING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "SUSPENDED",
        "PREEMPTED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
RUNNING = frozenset({"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"})
ALIVE = QUEUED | RUNNING
CANCELLED = frozenset({"CANCELLED", "REVOKED"})


def require_submitit() -> Any:
    """The submitit module, or one InputError naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise InputError(
            "the slurm and submitit-local executors need submitit, which is not installed",
            where="--executor",
            fix="pip install 'cxrbench[slurm]'",
        ) from None
    return submitit


def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job id: SLURM state}`` from sacct (submitit's parser), and from squeue for the ids sacct does not
    list (no accounting, or accounting lagging behind a fresh submission; every state the controller
    still remembers); None when neither answers.
    Jobs the scheduler no longer knows are absent."""
    if not job_ids:
        return {}
    require_submitit()
    from submitit.slurm.slurm import SlurmInfoWatcher

    ids = sorted({str(j) for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for j in ids:
        cmd += ["-j", j]
    states: dict[str, str] | None = None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        info = SlurmInfoWatcher().read_info(out)
        states = {j: info[j]["State"] for j in ids if j in info and info[j].get("State")}
        if len(states) == len(ids):
            return states
    except (OSError, subprocess.SubprocessError):
        pass
    missing = [j for j in ids if j not in (states or {})]
    try:
        # every state (-t all): the controller still knows a job that ended (FAILED, TIMEOUT, CANCELLED
        # by a failed dependency) for MinJobAge seconds, where plain squeue lists queued and running ones
        out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(missing)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return states
    found = dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)
    return {**(states or {}), **{j: found[j] for j in missing if j in found}}


def cancel_jobs(job_ids: list[str]) -> None:
    """``scancel`` the jobs (one call)."""
    if not job_ids:
        return
    try:
        subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        raise InputError(
            f"scancel failed: {' '.join(str(err).split())[:300]}",
            where="cxrbench study cancel",
            fix="run it where SLURM's commands are available (the login node)",
        ) from None
