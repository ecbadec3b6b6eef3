"""torchrun support: environment detection, process group, collectives, and the rank-0 writer.

``torchrun --nproc_per_node=N -m cxrbench train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; a plain ``cxrbench train`` has none and runs as a world of one, with every
collective below a no-op. Backend: NCCL on CUDA, gloo on CPU. Only rank 0 writes files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cxrbench.errors import InputError


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


def device_for(env: DistEnv, requested: str | None) -> torch.device:
    """The device this rank trains on: CUDA ``cuda:LOCAL_RANK`` when available, else CPU."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was requested but is not available", where="--device",
                             fix="use --device cpu or install a CUDA build of torch")
        if dev.index is None:
            dev = torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(dev)
    return dev


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


class Rank0Writer:
    """``log.jsonl`` lines and TensorBoard scalars, written by rank 0 only (no-ops elsewhere).

    ``resume_step``: when resuming from a checkpoint taken after that optimizer step, drop log
    lines and TensorBoard events of later steps (they are about to be recomputed).
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, resume_step: int | None = None,
                 tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self._tb = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_log(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (NaN written as null) and flush."""
        if not self.enabled:
            return
        self._file.write(json.dumps(_finite(record), default=str) + "\n")
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars at ``step`` (non-finite values skipped)."""
        if self._tb is None:
            return
        for tag, v in values.items():
            if v is not None and np.isfinite(v):
                self._tb.add_scalar(tag, float(v), step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def truncate_log(path: str | os.PathLike, max_step: int) -> None:
    """Keep only ``log.jsonl`` lines whose ``step`` is at most ``max_step`` (atomic rewrite)."""
    from cxrbench.fileio import atomic_write_text

    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if rec.get("step", 0) <= max_step:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))
