"""What a finished (or early-stopped) training run reports, whichever driver trained it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run reports."""

    run_dir: Path
    best_metric: float
    best_epoch: int
    epochs_done: int
    steps: int
    stopped_early: bool
    resumed: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def train_result(run_dir: Path, best: dict[str, Any], progress: dict[str, Any], history: list[dict[str, Any]],
                 resumed: bool) -> TrainResult:
    """A :class:`TrainResult` from the drivers' ``best`` and ``progress`` state."""
    return TrainResult(run_dir=run_dir, best_metric=float(best["value"]), best_epoch=int(best["epoch"]),
                       epochs_done=int(progress["epoch"]), steps=int(progress["step"]),
                       stopped_early=bool(progress.get("stopped_early", False)), resumed=resumed,
                       history=history)
