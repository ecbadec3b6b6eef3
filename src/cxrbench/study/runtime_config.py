"""The runtime sections of a study config: where the steps run (``executor``) and which tracker the
runs log to (``tracker``). Never part of a step key or of the config hash (they change nothing that
is computed)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cxrbench.study.sections import Strict

# --- where steps run and where runs are tracked (never part of a step key) ------------------------

EXECUTOR_KINDS: tuple[str, ...] = ("local", "slurm", "submitit-local")
# the kinds whose jobs get `time` and gpus_per_run (tune: a tuning trial trains a run)
TRAINING_KINDS: tuple[str, ...] = ("train", "pretrain", "ssl", "tune")
# sbatch flags the SLURM executor sets itself: an `extra` entry may not set them
_OWN_SBATCH = frozenset({"job-name", "partition", "account", "qos", "constraint", "nodes", "ntasks-per-node",
                         "gpus-per-node", "cpus-per-task", "mem", "time", "dependency", "output", "error",
                         "signal", "open-mode", "array", "wckey"})
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_minutes(value: int | str) -> int:
    """SLURM time (minutes, ``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) -> whole minutes (rounded up)."""
    if isinstance(value, int):
        return value
    m = _TIME.match(str(value).strip())
    if m is None:
        raise ValueError(f"time {value!r}: write minutes (e.g. 90), HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if a is None:  # the pattern always captures it
        raise ValueError(f"time {value!r}: write minutes (e.g. 90), HH:MM:SS or D-HH:MM:SS")
    if b is None:
        return a if days is None else days * 1440 + a * 60  # plain minutes, or D-HH
    if c is None:
        h, mi, sec = (a, b, 0) if days is not None else (0, a, b)  # D-HH:MM or MM:SS
    else:
        h, mi, sec = a, b, c
    return (days or 0) * 1440 + h * 60 + mi + (1 if sec else 0)


class ExecutorSpec(Strict):
    """Where the steps run: ``local`` (inline, the default), ``slurm`` (one submitit job per step, with
    afterok dependencies) or ``submitit-local`` (one local subprocess per step through submitit).

    Resources: training runs get ``nodes_per_run`` nodes x ``gpus_per_run`` GPUs (one DDP process per
    GPU, ``cpus_per_gpu`` CPUs each); evaluations one GPU; the other steps no GPU and
    ``cpus_per_gpu x gpus_per_run`` CPUs.
    """

    kind: Literal["local", "slurm", "submitit-local"] = "local"
    partition: str | None = Field(None, description="SLURM partition (sbatch --partition)")
    account: str | None = Field(None, description="SLURM account (sbatch --account)")
    qos: str | None = Field(None, description="quality of service (sbatch --qos)")
    constraint: str | None = Field(None, description="node features, e.g. a100 (sbatch --constraint)")
    gpus_per_run: int = Field(1, ge=0, le=64, description="GPUs per node of a training run")
    nodes_per_run: int = Field(1, ge=1, le=1024, description="nodes of a training run (one DDP job)")
    cpus_per_gpu: int = Field(8, ge=1, le=512, description="CPUs per GPU process (data loading)")
    mem: str | None = Field(None, pattern=r"^\d+[KMGT]?$", description="memory per node, e.g. 64G")
    time: int | str = Field("24:00:00", description="time limit of a training run (minutes or HH:MM:SS)")
    step_time: int | str = Field("4:00:00", description="time limit of every other step")
    max_requeues: int = Field(3, ge=0, le=100, description="requeues after preemption or time-out")
    setup: tuple[str, ...] = Field((), description="shell lines run before each step (module load, ...)")
    extra: dict[str, str | int | bool] = Field(default_factory=dict, description="further sbatch flags")
    max_parallel: int = Field(2, ge=1, le=256, description="submitit-local: steps running at once")

    def time_limit(self, kind: str) -> tuple[str, int | str]:
        """The key and value of the time limit of a step kind's job (training runs ``time``, others
        ``step_time``)."""
        return ("time", self.time) if kind in TRAINING_KINDS else ("step_time", self.step_time)

    @field_validator("time", "step_time")
    @classmethod
    def _time(cls, v: int | str) -> int | str:
        if time_minutes(v) < 1:
            raise ValueError("the time limit must be at least one minute")
        return v

    @field_validator("extra")
    @classmethod
    def _extra(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k in v:
            flag = k.lstrip("-").replace("_", "-")
            if flag in _OWN_SBATCH:
                raise ValueError(f"extra flag {k!r} is set by cxrbench; use the executor key for it "
                                 "(partition, account, qos, constraint, mem, time, gpus_per_run, ...)")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> ExecutorSpec:
        if self.kind == "submitit-local" and self.nodes_per_run > 1:
            raise ValueError("submitit-local runs on this machine only: nodes_per_run must be 1")
        return self


class TrackerSpec(Strict):
    """An experiment tracker every training run of the study logs to (runtime: not in any step key)."""

    kind: Literal["mlflow", "wandb"] = Field(description="mlflow (MLFLOW_TRACKING_URI) or wandb")
    project: str | None = Field(None, description="MLflow experiment / W&B project [the study name]")


