"""A one-node SLURM cluster on this machine: a recipe to read, and what cxrbench's tests run against.

It needs Debian's (or Ubuntu's) packages and root (slurmd starts jobs as their user)::

    apt-get install slurmctld slurmd slurm-client munge              # the cluster
    apt-get install slurmdbd mariadb-server                          # accounting (sacct), optional

    python scripts/slurm_cluster.py start DIR        # writes DIR/etc/slurm.conf, starts the daemons
    export SLURM_CONF=DIR/etc/slurm.conf             # sbatch, squeue, sacct, scancel now talk to it
    sinfo                                            # one node, 'localhost', idle
    python scripts/slurm_cluster.py stop DIR         # cancels the jobs, stops the daemons by their pids

Everything lives under DIR (configs, state, spool, logs, the database, the munge key and socket); no
system file or service is touched: the daemons run in the foreground as children of ``start`` (their
pids in ``DIR/pids.json``), on free TCP ports, with a private munge socket (``AuthInfo=socket=...``).

The cluster: one node ``localhost`` with ``--cpus`` CPUs (2) and no GPUs, one partition ``cpu``,
``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` (no cgroups needed, so it runs in
a container), ``KillWait=5`` (a cancelled or requeued job gets 5 s between SIGTERM and SIGKILL),
``cred_expire=10`` (a requeued job waits 11 s before it may start again; 121 s by default) and
``MinJobAge=600`` (the controller remembers a finished job for 10 minutes: ``squeue -t all``). With
accounting (the default when ``slurmdbd`` and ``mariadbd`` are installed; ``--no-accounting`` turns it
off) a private MariaDB server on a free port keeps the job records that ``sacct`` reads, and
``AccountingStorageEnforce=associations`` makes accounts real: the account ``lab`` exists and the
user running ``start`` belongs to it (``sbatch --account=lab``); another account is refused, as on a
production cluster.

In Python (the pytest fixture of ``tests/study/conftest.py``)::

    cluster = Cluster(DIR)
    cluster.start()          # children of this process; raises ClusterError with the daemon's log
    env = cluster.env        # {"SLURM_CONF": ...}: add it to os.environ of whatever calls sbatch
    cluster.stop()
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLUSTER = "cxrbench"
NODE = "localhost"  # the node's name is also its address: MASTER_ADDR of a multi-task job resolves
PARTITION = "cpu"
ACCOUNT = "lab"
CORE = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "squeue", "scancel", "scontrol")
ACCOUNTING = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacct", "sacctmgr")
SBIN = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


class ClusterError(RuntimeError):
    """A daemon did not come up (the message ends with the tail of its log)."""


def which(name: str) -> str | None:
    """A program on PATH or in the sbin folders (daemons are often not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing(accounting: bool = False) -> list[str]:
    """The programs this cluster needs that are not installed."""
    return [p for p in CORE + (ACCOUNTING if accounting else ()) if which(p) is None]


def free_ports(n: int) -> list[int]:
    """n TCP ports nobody listens on now (the kernel's choice; held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


class Cluster:
    """The daemons of a one-node cluster under ``root`` (see the module's doc)."""

    def __init__(self, root: str | Path, cpus: int = 2, accounting: bool | None = None) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus
        self.accounting = (not missing(True)) if accounting is None else accounting
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.etc, self.log, self.run = self.root / "etc", self.root / "log", self.root / "run"
        self.conf = self.etc / "slurm.conf"
        self.munge_socket = self.run / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}

    @property
    def env(self) -> dict[str, str]:
        """What a process needs in its environment to use this cluster (jobs inherit it from sbatch)."""
        return {"SLURM_CONF": str(self.conf)}

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
        return {**os.environ, **self.env, "PATH": path}

    # --- configuration ----------------------------------------------------------------------------

    def write_config(self) -> None:
        for d in (self.etc, self.log, self.run, self.root / "state", self.root / "spool"):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        key = self.etc / "munge.key"
        if not key.exists():  # munged refuses a key others can read
            key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld, slurmd, dbd, db = free_ports(4)
        self.db_port = db
        accounting = (
            f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
            f"AccountingStoragePort={dbd}\nAccountingStorageEnforce=associations\n"
            # the munge socket of the connections to slurmdbd (AuthInfo covers only the others)
            f"AccountingStoragePass={self.munge_socket}\n"
            if self.accounting
            else "AccountingStorageType=accounting_storage/none\n"
        )
        self.conf.write_text(
            f"""\
# one node, no GPUs, everything under {self.root} (scripts/slurm_cluster.py)
ClusterName={CLUSTER}
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser={self.user}
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.run}/slurmctld.pid
SlurmdPidFile={self.run}/slurmd.pid
SlurmctldLogFile={self.log}/slurmctld.log
SlurmdLogFile={self.log}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=600
{accounting}NodeName={NODE} CPUs={self.cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""
        )
        if self.accounting:
            dbd_conf = self.etc / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF
            dbd_conf.write_text(
                f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdPort={dbd}
SlurmUser={self.user}
LogFile={self.log}/slurmdbd.log
PidFile={self.run}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""
            )
            dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read (it holds a password)

    # --- the daemons --------------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], detach: bool) -> None:
        out = open(self.log / f"{name}.stdout", "ab")  # the child holds it
        proc = subprocess.Popen(
            cmd, env=self._env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
        out.close()
        self.procs[name] = proc
        self.pids[name] = proc.pid
        (self.root / "pids.json").write_text(json.dumps(self.pids))

    def _wait(self, name: str, ready, what: str, timeout: float = 60) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                break
            if ready():
                return
            time.sleep(0.2)
        log = self.log / f"{name}.log"
        log = log if log.exists() else self.log / f"{name}.stdout"
        raise ClusterError(f"{name} did not become ready ({what}) within {timeout:.0f} s; "
                           f"{log}:\n{_tail(log)}")

    def _cmd(self, *cmd: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command with this cluster's environment, its output captured."""
        return subprocess.run(cmd, env=self._env(), capture_output=True, text=True, timeout=timeout,
                              check=check)

    def _ok(self, *cmd: str) -> bool:
        try:
            return self._cmd(*cmd, timeout=20).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _sql(self, statement: str) -> None:
        self._cmd(which("mariadb"), "--no-defaults", f"--socket={self.run}/mysql.sock", "-uroot",
                  "-e", statement, check=True)

    def start(self, detach: bool = False) -> None:
        """Write the configs and start munged, (mariadbd, slurmdbd,) slurmctld and slurmd; returns once
        ``sinfo`` shows the node idle. ``detach``: the daemons outlive this process (the command line)."""
        if os.getuid() != 0:
            raise ClusterError("slurmd must run as root (it starts every job as its user)")
        gone = missing(self.accounting)
        if gone:
            raise ClusterError("not installed: " + ", ".join(gone))
        self.write_config()
        try:
            self._start_all(detach)
        except BaseException:
            self.stop()
            raise

    def _start_all(self, detach: bool) -> None:
        self._spawn("munged", [which("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={self.etc}/munge.key", f"--log-file={self.log}/munged.log",
                               f"--pid-file={self.run}/munged.pid", f"--seed-file={self.run}/munged.seed"],
                    detach)
        self._wait("munged", lambda: self.munge_socket.exists(), "its socket")
        if self.accounting:
            self._start_accounting(detach)
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)], detach)
        self._wait("slurmctld", lambda: self._ok("scontrol", "ping"), "scontrol ping")
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", NODE, "-f", str(self.conf)], detach)
        self._wait("slurmd", self.node_idle, f"sinfo: node {NODE} idle", timeout=90)

    def _start_accounting(self, detach: bool) -> None:
        db = self.root / "db"
        if not (db / "mysql").is_dir():
            self._cmd(which("mariadb-install-db"), "--no-defaults", f"--datadir={db}", f"--user={self.user}",
                      "--auth-root-authentication-method=socket", "--skip-test-db", check=True, timeout=300)
        self._spawn("mariadbd", [which("mariadbd"), "--no-defaults", f"--datadir={db}", f"--user={self.user}",
                                 f"--socket={self.run}/mysql.sock", f"--port={self.db_port}",
                                 "--bind-address=127.0.0.1", f"--pid-file={self.run}/mariadbd.pid",
                                 f"--log-error={self.log}/mariadbd.log", "--skip-name-resolve"], detach)
        query = [which("mariadb"), "--no-defaults", f"--socket={self.run}/mysql.sock", "-uroot",
                 "-e", "select 1"]
        self._wait("mariadbd", lambda: self._ok(*query), "a query")
        self._sql("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                  "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';")
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"], detach)
        self._wait("slurmdbd", lambda: self._ok("sacctmgr", "-n", "show", "cluster"), "sacctmgr show cluster")
        for args in (["add", "cluster", CLUSTER], ["add", "account", ACCOUNT, f"cluster={CLUSTER}"],
                     ["add", "user", self.user, f"account={ACCOUNT}", f"cluster={CLUSTER}"]):
            self._cmd("sacctmgr", "-i", *args)

    def node_idle(self) -> bool:
        try:
            out = self._cmd("sinfo", "-h", "-n", NODE, "-o", "%t", timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return out.strip() == "idle"

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job of the cluster, then stop the daemons (by their pids, the last started first)."""
        pids = self.pids or self._read_pids()
        if "slurmctld" in pids and self._alive("slurmctld", pids["slurmctld"]):
            self.cancel_all(timeout)
        for name in reversed(list(pids)):
            pid = pids[name]
            if not self._alive(name, pid):
                continue
            os.kill(pid, signal.SIGTERM)
            t0 = time.time()
            while time.time() - t0 < timeout and self._alive(name, pid):
                time.sleep(0.1)
            if self._alive(name, pid):
                os.kill(pid, signal.SIGKILL)
            if name in self.procs:
                self.procs[name].wait(timeout=timeout)
        self.procs, self.pids = {}, {}
        (self.root / "pids.json").unlink(missing_ok=True)

    def cancel_all(self, timeout: float = 30) -> None:
        """``scancel`` every job of this user on the cluster; returns once none is left (or after timeout)."""
        self._cmd("scancel", f"--user={self.user}", timeout=30)
        t0 = time.time()  # the jobs' processes belong to slurmstepd, which goes with its job
        while time.time() - t0 < timeout and self._jobs_left():
            time.sleep(0.5)

    def _jobs_left(self) -> bool:
        try:
            out = self._cmd("squeue", "-h", "-o", "%i", timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            return False
        return bool(out.strip())

    def _read_pids(self) -> dict[str, int]:
        path = self.root / "pids.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _alive(self, name: str, pid: int) -> bool:
        """Is ``pid`` still this daemon (not a reused pid)? A child that exited is reaped here."""
        proc = self.procs.get(name)
        if proc is not None:
            return proc.poll() is None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            return False
        return os.path.basename(cmdline.decode(errors="replace")) == name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("start", "stop", "env"))
    ap.add_argument("dir", help="the cluster's folder (configs, state, logs)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the node (default 2)")
    ap.add_argument("--no-accounting", action="store_true", help="no slurmdbd/MariaDB (sacct then fails)")
    args = ap.parse_args(argv)
    cluster = Cluster(args.dir, cpus=args.cpus, accounting=False if args.no_accounting else None)
    if args.command == "env":
        print(f"export SLURM_CONF={cluster.conf}")
    elif args.command == "stop":
        cluster.stop()
        print(f"stopped the cluster in {cluster.root}")
    else:
        try:
            cluster.start(detach=True)
        except (ClusterError, subprocess.SubprocessError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        acct = "with accounting (sacct)" if cluster.accounting else "without accounting"
        account = f", account {ACCOUNT}" if cluster.accounting else ""
        print(f"cluster up {acct}: node {NODE}, {cluster.cpus} CPUs, partition {PARTITION}{account}")
        print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
