"""torchrun support and the one device resolver: environment, process group, collectives, devices.

``torchrun --nproc_per_node=N -m cxrbench train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; a plain ``cxrbench train`` has none and runs as a world of one, with every
collective below a no-op. Backend: NCCL on CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cxrbench.common.errors import InputError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``backend`` is None for a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # True when init() created the process group (and destroy() may end it)

    @property
    def enabled(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer", where=name,
                         fix="launch with torchrun, which sets it") from None


def detect() -> DistEnv:
    """Read torchrun's environment without touching the process group."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} / WORLD_SIZE={world} is not a valid position", where="environment",
                         fix="launch with torchrun, which sets them")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def resolve_device(requested: str | torch.device | None = None, env: DistEnv | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when available, else CPU.

    Under torchrun a bare ``cuda`` becomes ``cuda:LOCAL_RANK`` (and is made current). A bad name or
    CUDA without a GPU is an InputError naming ``--device``. Every command resolves devices here.
    """
    if requested is None or requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {requested!r}", where="--device",
                         fix="use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but is not available", where="--device",
                             fix="use --device cpu or install a CUDA build of torch")
        if dev.index is None:
            local = env.local_rank if env is not None else 0
            dev = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        if env is not None:
            torch.cuda.set_device(dev)
    return dev


def device_for(env: DistEnv, requested: str | None) -> torch.device:
    """The device this rank trains on (:func:`resolve_device` with the rank's environment)."""
    return resolve_device(requested, env)


def init(device: torch.device, env: DistEnv | None = None) -> DistEnv:
    """Initialize the default process group when launched by torchrun with N > 1 processes."""
    env = env or detect()
    if not env.enabled:
        return env
    backend = "nccl" if device.type == "cuda" else "gloo"
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                                device_id=device if device.type == "cuda" else None)
    else:  # joined a group someone else holds (e.g. the study runner across many runs)
        backend = dist.get_backend()
    return DistEnv(env.rank, env.world_size, env.local_rank, backend, owns_group=created)


def destroy(env: DistEnv) -> None:
    """Tear down the process group if :func:`init` created it; a joined group is left to its owner."""
    if env.enabled and env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """In-place sum over ranks; returns ``t``."""
    if env.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, env: DistEnv, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj if env.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_flag(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one rank."""
    if not env.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_predictions(indices: np.ndarray, values: np.ndarray, env: DistEnv,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every rank's (row indices [n], values [n, K]); sorted by index, duplicates dropped.

    Samplers pad a split to a multiple of the world size by repeating rows; those repeats are
    removed here, so the result has each row of the split exactly once.
    """
    parts = all_gather_objects((np.asarray(indices), np.asarray(values)), env)
    idx = np.concatenate([p[0] for p in parts])
    val = np.concatenate([p[1] for p in parts])
    idx, first = np.unique(idx, return_index=True)
    return idx, val[first]

