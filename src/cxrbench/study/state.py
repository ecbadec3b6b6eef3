"""What is already done: step markers, statuses, step locks and setting stale outputs aside.

A step is *done* when its marker ``OUT/.steps/<id>.json`` records the step's key with status
``done`` and its completion files exist (a cache's manifest.json, a run's best.json, an
evaluation's metrics.json); otherwise it is *pending* (never run, or interrupted: the step
resumes), or *stale* (its output was made from another config: it is set aside into
``OUT/.stale/`` and recomputed).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cxrbench.common.fileio import atomic_write_json, file_lock
from cxrbench.common.provenance import now_iso
from cxrbench.study.layout import STALE_DIR, STEPS_DIR, StudyLayout
from cxrbench.study.steps import Plan, Step

__all__ = ["STALE_DIR", "STEPS_DIR", "marker_path", "read_marker", "refresh_status", "set_aside",
           "step_lock", "write_marker"]


def marker_path(out: Path, step_id: str) -> Path:
    """``OUT/.steps/<id>.json`` (the id's slashes become folders)."""
    return StudyLayout(out).marker(step_id)


def read_marker(out: Path, step_id: str) -> dict[str, Any] | None:
    """The step's marker, or None when missing or unreadable (an unreadable marker = not done)."""
    path = marker_path(out, step_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(out: Path, step: Step, status: str, **extra: Any) -> None:
    """The step's marker with ``status`` (``running``, ``done``, ``failed``) and its config."""
    atomic_write_json(
        marker_path(out, step.id),
        {
            "id": step.id,
            "kind": step.kind,
            "key": step.key,
            "status": status,
            "out": str(step.out),
            "host": platform.node(),
            "pid": os.getpid(),
            "updated": now_iso(),
            **extra,
            "config": step.config,
            "deps": list(step.deps),
        },
    )


def is_finished(out: Path, step: Step) -> bool:
    """True when the marker says done with this step's key and the completion files exist."""
    m = read_marker(out, step.id)
    return (m is not None and m.get("key") == step.key and m.get("status") == "done"
            and all((step.out / c).exists() for c in step.complete))


def refresh_status(plan: Plan) -> Plan:
    """Set every step's status from its marker and completion files (cheap: stats and small reads)."""
    out = plan.study.out
    for s in plan.steps:
        if s.deferred:
            s.status = "deferred"
            continue
        m = read_marker(out, s.id)
        if m is not None and m.get("key") == s.key:
            finished = m.get("status") == "done" and all((s.out / c).exists() for c in s.complete)
            s.status = "done" if finished else "pending"
        elif m is not None or (s.out.exists() and _non_empty(s.out) and s.kind not in ("phantom", "report")):
            s.status = "stale"
        else:
            s.status = "pending"
    return plan


def set_aside(out: Path, step: Step) -> None:
    """Move a stale output to ``OUT/.stale/<id>-<time>`` (never deleted: it may hold days of training,
    or files the user put there)."""
    if step.out.exists():
        dest = StudyLayout(out).stale_dir(step.id, time.strftime("%Y%m%d-%H%M%S"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(step.out), str(dest))
    marker_path(out, step.id).unlink(missing_ok=True)


@contextlib.contextmanager
def step_lock(out: Path, step_id: str, on_busy: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock per step (shards sharing a filesystem never run a step twice)."""
    with file_lock(StudyLayout(out).lock(step_id), wait=True, on_busy=on_busy):
        yield


def _non_empty(path: Path) -> bool:
    if path.is_file():
        return True
    try:
        return any(path.iterdir())
    except OSError:
        return False
