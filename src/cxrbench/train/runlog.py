"""The run's log: ``log.jsonl`` lines and TensorBoard scalars (and an experiment tracker's metrics,
:mod:`cxrbench.train.tracking`), written by rank 0 only.

On resume the lines and events of steps after the checkpoint are dropped first, so a resumed run's
log reads as if it had never stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.common.fileio import atomic_write_text, json_safe
from cxrbench.common.layout import RUN_LOG, RUN_TENSORBOARD
from cxrbench.train.tracking import Tracker


class Rank0Writer:
    """``log.jsonl`` lines and TensorBoard scalars, written by rank 0 only (no-ops elsewhere).

    ``resume_step``: when resuming from a checkpoint taken after that optimizer step, drop log
    lines and TensorBoard events of later steps (they are about to be recomputed). ``tracker``:
    also send every scalar to it, and the final figures at :meth:`finish`.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, resume_step: int | None = None,
                 tensorboard: bool = True, tracker: Tracker | None = None) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / RUN_LOG
        self._tb = None
        self._tracker = tracker if enabled else None
        if not enabled:
            return
        if resume_step is not None:
            truncate_log(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                pass
            else:
                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(str(Path(run_dir) / RUN_TENSORBOARD), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line (NaN written as null, infinities as "inf") and flush."""
        if not self.enabled:
            return
        self._file.write(json.dumps(json_safe(record), default=str) + "\n")
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars at ``step`` (non-finite values skipped)."""
        finite = {tag: float(v) for tag, v in values.items() if v is not None and np.isfinite(v)}
        if self._tracker is not None:
            self._tracker.log(step, finite)
        if self._tb is None:
            return
        for tag, v in finite.items():
            self._tb.add_scalar(tag, v, step)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended normally: the tracker gets the final figures and is closed."""
        if self._tracker is not None:
            tracker, self._tracker = self._tracker, None
            tracker.finish(summary)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tracker is not None:  # not finished: training failed or was interrupted
            tracker, self._tracker = self._tracker, None
            tracker.finish(None)
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def truncate_log(path: str | os.PathLike, max_step: int) -> None:
    """Keep only ``log.jsonl`` lines whose ``step`` is at most ``max_step`` (atomic rewrite)."""
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

