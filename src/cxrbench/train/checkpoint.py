"""Run-folder checkpoints: ``checkpoints/last.pt`` for exact resume, ``best.safetensors`` + ``best.json``.

``last.pt`` is a plain dict of tensors and Python scalars (model, optimizer, grad scaler, schedule,
RNG states per rank, sampler position, early-stopping state), written atomically with
``torch.save`` and read back with ``torch.load(weights_only=True)``: no pickled code, ever.
``best.safetensors`` holds the model weights (backbone and head) and ``best.json`` what is needed
to use them: findings, image size, normalization, init, architecture, cache recipe, val metric.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_path, atomic_write_json, read_json
from cxrbench.common.layout import RUN_BEST_META, RUN_BEST_WEIGHTS, RUN_LAST

LAST = Path(RUN_LAST)
BEST_WEIGHTS = RUN_BEST_WEIGHTS
BEST_META = RUN_BEST_META
FORMAT_VERSION = 1
# what a scheduler sends before it ends a job; a Python handler of them (submitit's: requeue on
# preemption, give up after the time limit) raises wherever the main thread is
_DEFERRED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGUSR1", "SIGUSR2", "SIGTERM") if hasattr(signal, n))


def save_last(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, ``os.replace``); a signal handled in
    Python meanwhile runs once the checkpoint is in place."""
    with _signals_deferred(), atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold the Python handlers of USR1/USR2/TERM while a checkpoint is written, then run the held ones.

    torch.save writes through Python callbacks of its C++ zip writer: a handler that raises in one of
    them (submitit's, on a SLURM time-out or preemption) leaves ``RuntimeError: [enforce fail at
    inline_container.cc] unexpected pos`` in place of its own exception, and the last checkpoint it
    was writing unfinished. Signals without a Python handler keep their default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handlers = {s: h for s in _DEFERRED_SIGNALS if callable(h := signal.getsignal(s))}
    for s in handlers:
        signal.signal(s, lambda signum, _frame: held.append(signum))
    try:
        yield
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        for s in held:
            handlers[s](s, None)


def load_last(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``last.pt`` with ``weights_only=True``; damaged or foreign files raise InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", where=str(path), fix="start the run without resuming")
    from cxrbench.models.safeload import torch_load

    try:  # the one reader of pickles: refuses code, names damage in one line, goes by bytes not name
        state = torch_load(path, map_location=map_location, fix="delete it and restart with --overwrite")
    except InputError as e:
        raise InputError(f"cannot read the checkpoint: {e.what}", where=e.where, fix=e.fix) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise InputError("not a cxrbench checkpoint of this version", where=str(path),
                         fix="restart the run with --overwrite")
    return state


# --- RNG state --------------------------------------------------------------------------------------

def stream_seed(seed: int, *key: int) -> int:
    """A 63-bit seed derived from ``seed`` and a key (rank, stream): independent streams, no collisions."""
    import numpy as np

    return int(np.random.SeedSequence([seed, *key]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Global torch CPU/CUDA RNG states plus the named generators' states (CPU byte tensors)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["generators"] = {name: g.get_state() for name, g in (generators or {}).items()}
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng`; a generator missing from ``state`` raises InputError."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise InputError(f"checkpoint has no state for RNG {name!r}", where=str(LAST),
                             fix="restart the run with --overwrite")
        g.set_state(state["generators"][name])


def resume_epoch(loader, sampler, epoch: int, first_micro: int, micro: int, rng_state: dict[str, Any] | None,
                 generators: dict[str, torch.Generator]):
    """The batch iterator of ``epoch`` from micro-step ``first_micro`` (``micro`` samples each), with a
    checkpoint's RNG ``rng_state`` (None: a fresh start) restored on the right side of the draw that
    creating a loader iterator makes from the global RNG: a checkpoint taken at an epoch end was
    saved before that draw, one taken mid-epoch after it."""
    sampler.set_epoch(epoch)
    sampler.set_start(first_micro * micro)
    if rng_state is not None and first_micro == 0:
        restore_rng(rng_state, generators)
        return iter(loader)
    batches = iter(loader)
    if rng_state is not None:
        restore_rng(rng_state, generators)
    return batches


# --- best weights -----------------------------------------------------------------------------------

def state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as independent contiguous CPU tensors (safe for safetensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_best(run_dir: str | os.PathLike, weights: dict[str, torch.Tensor], meta: dict[str, Any],
              header: dict[str, Any] | None = None) -> None:
    """Write ``best.safetensors`` then ``best.json`` atomically; the epoch ties the pair together.

    ``header``: further facts for the weights file's header, where the weights alone do not tell two
    fits apart (a kNN run's frozen backbone: its choice and bank, so evaluate's staleness check, the
    file's SHA-256, sees a new fit)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    facts = {"epoch": meta.get("epoch"), "findings": meta.get("findings"), "arch": meta.get("arch"),
             "init": meta.get("init"), **(header or {})}
    header = {"cxrbench": json.dumps(facts)}
    with atomic_path(run_dir / BEST_WEIGHTS) as tmp:
        save_file(weights, str(tmp), metadata=header)
    atomic_write_json(run_dir / BEST_META, meta)


def read_best_meta(path: str | os.PathLike) -> dict[str, Any]:
    """``best.json`` for a run folder, a ``best.safetensors`` path or a ``best.json`` path."""
    path = Path(path)
    if not path.exists():
        raise InputError("run folder or checkpoint not found", where=str(path),
                         fix=spell("give the folder made by `cxrbench train` (or its best.safetensors)",
                                   "give the run folder of cxrbench.train(cfg), cfg.out (or its "
                                   "best.safetensors)"))
    if path.is_file() and path.suffix not in (".safetensors", ".json"):
        raise InputError("is a file, not a run folder", where=str(path),
                         fix=spell("give the folder made by `cxrbench train` (or its best.safetensors)",
                                   "give the run folder of cxrbench.train(cfg), cfg.out (or its "
                                   "best.safetensors)"))
    meta_path = path / BEST_META if path.is_dir() else path.with_name(BEST_META)
    if not meta_path.is_file():
        raise InputError("no best.json beside the weights", where=str(meta_path.resolve()),
                         fix="train the run until at least one validation has finished")
    meta = read_json(meta_path)
    for key in ("findings", "arch", "image_size", "mean", "std"):
        if key not in meta:
            raise InputError(f"best.json lacks key {key!r}", where=str(meta_path),
                             fix="re-train the run with this version of cxrbench")
    return meta


def load_best(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a run's best checkpoint (run folder or ``best.safetensors`` path)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cxrbench.models.safeload import safetensors_errors

    path = Path(path)
    weights_path = path / BEST_WEIGHTS if path.is_dir() else path
    meta = read_best_meta(path)
    if not weights_path.is_file():
        raise InputError("best weights not found", where=str(weights_path),
                         fix="train the run until at least one validation has finished")
    with safetensors_errors(weights_path, fix="re-train the run or restore the file"):
        with safe_open(str(weights_path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("cxrbench", "{}"))
        weights = load_file(str(weights_path))
    if header and header.get("epoch") != meta.get("epoch"):
        raise InputError(f"best.safetensors (epoch {header.get('epoch')}) and best.json (epoch "
                         f"{meta.get('epoch')}) do not belong together", where=str(weights_path),
                         fix="an interrupted write; resume the run to rewrite them")
    return weights, meta
