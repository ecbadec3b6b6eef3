"""A fake SLURM for tests and benchmarks: sbatch, srun, sacct, squeue, scancel and scontrol in one
stdlib-only script that records every call and runs each job as local processes.

``python fake_slurm.py install BIN STATE`` writes the commands into BIN (put it first on PATH); they
keep their state under STATE:

* ``submissions.jsonl``: one line per sbatch call (job id, script path and text, parsed #SBATCH flags);
* ``jobs/<id>.json``: each job's state (PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, CANCELLED),
  its afterok dependencies, restarts, and the pids of its running tasks;
* ``calls.jsonl``: every scancel / scontrol call.

``FAKE_SLURM_RUN=0`` (in the environment of sbatch) only records: jobs stay PENDING;
``FAKE_SLURM_NO_SACCT=1`` makes sacct fail as on a cluster without accounting. Otherwise a job
starts once all its afterok dependencies COMPLETED (with --kill-on-invalid-dep=yes it is CANCELLED
when one of them ends otherwise); ``srun`` starts ``--ntasks-per-node x --nodes`` tasks with
SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS set (one node: localhost); ``scancel --signal SIG``
signals the tasks, ``scancel`` kills the job; ``scontrol requeue`` ends the job's other tasks and
runs the batch script again with the same job id, as SLURM requeues a preempted job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "scontrol")
ALIVE = ("PENDING", "RUNNING", "REQUEUED")


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_DIR"])


@contextlib.contextmanager
def _locked():
    path = state_dir() / ".lock"
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _job_path(job_id: str) -> Path:
    return state_dir() / "jobs" / f"{job_id}.json"


def read_job(job_id: str) -> dict:
    return json.loads(_job_path(job_id).read_text())


def _write_job(job: dict) -> None:
    path = _job_path(job["id"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def update_job(job_id: str, **changes) -> dict:
    with _locked():
        job = read_job(job_id)
        job.update(changes)
        _write_job(job)
        return job


def _append(name: str, record: dict) -> None:
    with _locked(), open(state_dir() / name, "a") as f:
        f.write(json.dumps(record) + "\n")


def parse_flags(script: str) -> dict:
    """``#SBATCH --key=value`` / ``#SBATCH --flag`` lines -> {key: value or True}."""
    flags = {}
    for line in script.splitlines():
        m = re.match(r"#SBATCH\s+--([\w-]+)(?:=(.*))?$", line.strip())
        if m:
            value = m.group(2)
            flags[m.group(1)] = True if value is None else shlex.split(value)[0] if value else ""
    return flags


def _expand(pattern: str, job_id: str, task: int = 0) -> str:
    return pattern.replace("%j", job_id).replace("%A", job_id).replace("%t", str(task))


# --- the commands ----------------------------------------------------------------------------------


def sbatch(args: list[str]) -> int:
    path = Path(args[-1])
    script = path.read_text()
    flags = parse_flags(script)
    deps = []
    dep = flags.get("dependency")
    if isinstance(dep, str) and dep:
        kind, _, ids = dep.partition(":")
        if kind != "afterok":
            print(f"sbatch: fake SLURM understands afterok only, got {dep}", file=sys.stderr)
            return 1
        deps = [i for i in ids.split(":") if i]
    with _locked():
        counter = state_dir() / "next_id"
        job_id = str(int(counter.read_text()) if counter.exists() else 101)
        counter.write_text(str(int(job_id) + 1))
        for d in deps:
            if not _job_path(d).exists():
                print(
                    f"sbatch: error: Batch job submission failed: Job dependency problem ({d})",
                    file=sys.stderr,
                )
                return 1
        _write_job(
            {
                "id": job_id,
                "state": "PENDING",
                "script": str(path.resolve()),
                "flags": flags,
                "deps": deps,
                "restarts": 0,
                "pids": [],
                "pgid": None,
                "cwd": os.getcwd(),
                "submitted": time.time(),
            }
        )
    _append(
        "submissions.jsonl",
        {"id": job_id, "script": str(path.resolve()), "text": script, "flags": flags, "deps": deps},
    )
    if os.environ.get("FAKE_SLURM_RUN", "1") != "0":
        subprocess.Popen(
            [sys.executable, __file__, "_run", job_id],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    print(f"Submitted batch job {job_id}")
    return 0


def _run(job_id: str) -> int:
    """The life of one job: wait for its dependencies, run the script, requeue on request."""
    job = read_job(job_id)
    while True:
        job = read_job(job_id)
        if job["state"] != "PENDING":
            return 0  # cancelled meanwhile
        states = [read_job(d)["state"] for d in job["deps"]]
        if all(s == "COMPLETED" for s in states):
            break
        if any(s not in ALIVE and s != "COMPLETED" for s in states):
            if job["flags"].get("kill-on-invalid-dep") == "yes":
                update_job(job_id, state="CANCELLED", reason="DependencyNeverSatisfied")
            return 0
        time.sleep(0.05)
    flags = job["flags"]
    nodes = int(flags.get("nodes", 1))
    per_node = int(flags.get("ntasks-per-node", 1))
    env = dict(
        os.environ,
        SLURM_JOB_ID=job_id,
        SLURM_JOBID=job_id,
        SLURM_JOB_NAME=str(flags.get("job-name", "")),
        SLURM_JOB_NUM_NODES=str(nodes),
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST="localhost",
        SLURM_NTASKS=str(nodes * per_node),
        SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_SUBMIT_DIR=job["cwd"],
        SLURM_RESTART_COUNT=str(job["restarts"]),
    )
    out = _expand(str(flags.get("output", "slurm-%j.out")), job_id)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    while True:
        update_job(job_id, state="RUNNING", pgid=os.getpgid(0), started=time.time())
        with open(out, "a") as log:
            rc = subprocess.call(["bash", job["script"]], env=env, cwd=job["cwd"], stdout=log, stderr=log)
        job = read_job(job_id)
        if job["state"] == "CANCELLED":
            return 0
        flag = state_dir() / "jobs" / f"{job_id}.requeue"
        if flag.exists():
            flag.unlink()
            job = update_job(job_id, state="REQUEUED", restarts=job["restarts"] + 1, pids=[])
            env["SLURM_RESTART_COUNT"] = str(job["restarts"])
            continue
        update_job(
            job_id, state="COMPLETED" if rc == 0 else "FAILED", exit_code=rc, pids=[], ended=time.time()
        )
        return 0


def srun(args: list[str]) -> int:
    i, outputs = 0, {"--output": None, "--error": None}
    while i < len(args) and args[i].startswith("-"):
        if args[i] in outputs:
            outputs[args[i]] = args[i + 1]
            i += 2
        else:
            i += 1
    cmd = args[i:]
    job_id = os.environ["SLURM_JOB_ID"]
    ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
    procs, files = [], []
    for k in range(ntasks):
        env = dict(os.environ, SLURM_PROCID=str(k), SLURM_LOCALID=str(k), SLURM_NODEID="0", SLURM_STEPID="0")
        so = open(_expand(outputs["--output"], job_id, k), "a") if outputs["--output"] else None
        se = open(_expand(outputs["--error"], job_id, k), "a") if outputs["--error"] else None
        files += [f for f in (so, se) if f is not None]
        procs.append(subprocess.Popen(cmd, env=env, stdout=so, stderr=se))
    update_job(job_id, pids=[p.pid for p in procs])
    codes = [p.wait() for p in procs]
    for f in files:
        f.close()
    return next((c for c in codes if c), 0)


def sacct(args: list[str]) -> int:
    if os.environ.get("FAKE_SLURM_NO_SACCT") == "1":  # a cluster without accounting
        print("sacct: error: Slurm accounting storage is disabled", file=sys.stderr)
        return 1
    ids = [args[i + 1] for i, a in enumerate(args) if a == "-j"]
    print("JobID|State|NodeList")
    for job_id in ids:
        if _job_path(job_id).exists():
            print(f"{job_id}|{read_job(job_id)['state']}|localhost")
    return 0


def squeue(args: list[str]) -> int:
    ids = []
    for i, a in enumerate(args):
        if a == "-j":
            ids = args[i + 1].split(",")
    for job_id in ids:
        if _job_path(job_id).exists() and (state := read_job(job_id)["state"]) in ALIVE:
            print(f"{job_id}|{state}")
    return 0


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def scancel(args: list[str]) -> int:
    _append("calls.jsonl", {"cmd": "scancel", "args": args})
    sig = None
    ids = []
    i = 0
    while i < len(args):
        if args[i] == "--signal":
            sig, i = args[i + 1], i + 2
            continue
        ids.append(args[i])
        i += 1
    for job_id in ids:
        if not _job_path(job_id).exists():
            continue
        job = read_job(job_id)
        if sig is not None:
            _signal(job["pids"], getattr(signal, sig if sig.startswith("SIG") else "SIG" + sig))
            continue
        if job["state"] in ALIVE:
            update_job(job_id, state="CANCELLED")
            if job.get("pgid"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job["pgid"], signal.SIGKILL)
    return 0


def scontrol(args: list[str]) -> int:
    _append("calls.jsonl", {"cmd": "scontrol", "args": args})
    if args[:1] != ["requeue"]:
        return 0
    job_id = args[1]
    (state_dir() / "jobs" / f"{job_id}.requeue").touch()
    caller = os.getppid()  # the task that asked: it exits by itself; the job's other tasks are ended
    _signal([p for p in read_job(job_id)["pids"] if p != caller], signal.SIGKILL)
    return 0


def install(bin_dir: str, state: str) -> dict[str, str]:
    """Write the commands into ``bin_dir`` (state under ``state``); returns the environment to add."""
    bin_path, state_path = Path(bin_dir), Path(state)
    bin_path.mkdir(parents=True, exist_ok=True)
    (state_path / "jobs").mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        exe = bin_path / name
        exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {name} "$@"\n')
        exe.chmod(0o755)
    return {"PATH": f"{bin_path}{os.pathsep}{os.environ.get('PATH', '')}", "FAKE_SLURM_DIR": str(state_path)}


def main(argv: list[str]) -> int:
    cmd, args = argv[1], argv[2:]
    if cmd == "install":
        print(json.dumps(install(args[0], args[1])))
        return 0
    if cmd == "_run":
        return _run(args[0])
    return {
        "sbatch": sbatch,
        "srun": srun,
        "sacct": sacct,
        "squeue": squeue,
        "scancel": scancel,
        "scontrol": scontrol,
    }[cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
