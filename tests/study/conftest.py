"""A real one-node SLURM cluster for the study tests (``scripts/slurm_cluster.py``).

Nothing is installed here: when Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` are
present (and this runs as root, as slurmd must), the session's cluster is started once, under a temp
folder, on free ports, with accounting when ``slurmdbd`` and ``mariadb-server`` are installed too;
otherwise the tests that ask for it skip with the reason. The daemons are this process's children and
are stopped by their pids at the end of the session (after ``scancel`` of every job left).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm_cluster.py"
SRC = str(REPO / "src")
INSTALL = "apt-get install slurmctld slurmd slurm-client munge (+ slurmdbd mariadb-server for sacct)"
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE")


def cluster_module() -> ModuleType:
    """scripts/slurm_cluster.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("slurm_cluster", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Slurm:
    """The running cluster as the tests use it: its environment and the scheduler's answers."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.accounting: bool = cluster.accounting

    def run(self, *cmd: str) -> str:
        env = {**os.environ, **self.cluster.env}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True).stdout

    def state(self, job_id: str) -> str:
        """The job's state as the controller has it (every state, while it remembers the job)."""
        out = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T")
        return out.strip().split()[0] if out.strip() else "UNKNOWN"

    def field(self, job_id: str, name: str) -> str:
        """One field of ``scontrol show job`` (e.g. Restarts, Reason, JobState)."""
        for word in self.run("scontrol", "show", "job", job_id).split():
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
        raise KeyError(name)

    def wait(self, job_ids: list[str], timeout: float = 600) -> dict[str, str]:
        """Until every job ended; returns their states."""
        t0 = time.time()
        states: dict[str, str] = {}
        while time.time() - t0 < timeout:
            states = {j: self.state(j) for j in job_ids}
            if all(s in FINISHED for s in states.values()):
                return states
            time.sleep(0.5)
        raise AssertionError(f"jobs not finished after {timeout:.0f} s: {states}")


def _start(tmp_path_factory, accounting: bool | None):
    if os.getuid() != 0:
        pytest.skip("a real SLURM cluster needs root here (slurmd starts the jobs)")
    mod = cluster_module()
    gone = mod.missing(accounting=bool(accounting))
    if gone:
        pytest.skip(f"SLURM is not installed ({', '.join(gone)} missing): {INSTALL}")
    cluster = mod.Cluster(tmp_path_factory.mktemp("slurm"), cpus=2, accounting=accounting)
    cluster.start()  # a cluster that is installed but does not come up fails the test, with its log
    return cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The session's cluster: accounting (slurmdbd) when installed, as on a production cluster."""
    cluster = _start(tmp_path_factory, None)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster_without_accounting(tmp_path_factory):
    """A second cluster with no slurmdbd: sacct fails, as on a cluster that keeps no accounting."""
    cluster = _start(tmp_path_factory, False)
    yield cluster
    cluster.stop()


def _use(cluster, monkeypatch) -> Iterator[Slurm]:
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    # the jobs import this worktree's cxrbench and run torch on one thread, as the inline baselines do
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield Slurm(cluster)
    cluster.cancel_all(timeout=60)  # whatever the test left (it failed midway): the next one gets the node


@pytest.fixture
def slurm(slurm_cluster, monkeypatch) -> Iterator[Slurm]:
    """This test talks to the session's cluster (SLURM_CONF in its environment, inherited by the jobs);
    every job still queued or running at its end is cancelled."""
    yield from _use(slurm_cluster, monkeypatch)


@pytest.fixture
def slurm_no_accounting(slurm_cluster_without_accounting, monkeypatch) -> Iterator[Slurm]:
    yield from _use(slurm_cluster_without_accounting, monkeypatch)
