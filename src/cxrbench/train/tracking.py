"""Experiment trackers: a run also logs to MLflow or Weights & Biases (``--tracker mlflow|wandb``).

Beside ``log.jsonl`` and TensorBoard (never instead of them): the run's config as parameters, every
scalar written to TensorBoard as a metric at its optimizer step, and at the end the final figures
(best validation mean AUROC, its epoch, steps) and the SHA-256 of ``best.safetensors``. Rank 0 only.
``RUN/tracker.json`` records which tracker run this is, so a resumed run keeps logging to the same
one. Neither library is a dependency: ``pip install 'cxrbench[mlflow]'`` / ``'cxrbench[wandb]'``.

MLflow logs where ``MLFLOW_TRACKING_URI`` points: a server (``http://host:5000``) or, on this machine,
``sqlite:///mlflow.db`` (the ``mlflow`` extra installs mlflow-skinny with SQLAlchemy and Alembic, which
that store needs: MLflow 3 refuses the ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``, and
mlflow-skinny alone has no ``sqlite:``); W&B where its login and ``WANDB_MODE`` say
(``WANDB_MODE=offline`` writes ``RUN/wandb/`` only, for ``wandb sync`` later).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_json, json_safe
from cxrbench.common.layout import RUN_TRACKER

TRACKERS: tuple[str, ...] = ("mlflow", "wandb")
DEFAULT_PROJECT = "cxrbench"


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"{spell(f'--tracker {extra}', f'tracker={extra!r}')} needs the {module!r} package, which is not "
            "installed",
            where=spell("--tracker"),
            fix=f"pip install 'cxrbench[{extra}]'",
        ) from None


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": "1", "c": "[1, 2]"}`` (tracker params are strings)."""
    out: dict[str, str] = {}
    for k, v in json_safe(values).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


class Tracker:
    """One tracker run: :meth:`log` metrics at a step, :meth:`finish` with the final figures."""

    kind = ""

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any] | None) -> None:
        """End the run: ``summary`` on success, None when training failed or was interrupted."""
        raise NotImplementedError


class MlflowTracker(Tracker):
    """MLflow through its client API (no global active run): params, metrics per step, tags."""

    kind = "mlflow"

    def __init__(self, project: str, name: str, params: dict[str, str], run_id: str | None) -> None:
        _require("mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        try:
            self.client = MlflowClient(self.uri)
            if run_id is not None:
                try:
                    self.client.get_run(run_id)
                except Exception:  # the store was moved or wiped: start a new tracker run
                    run_id = None
            if run_id is None:
                exp = self.client.get_experiment_by_name(project)
                exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(project)
                run_id = self.client.create_run(
                    exp_id, run_name=name, tags={"cxrbench.run": name}
                ).info.run_id
                self._params(run_id, params)
            else:
                self.client.update_run(run_id, status="RUNNING")
        except InputError:
            raise
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise InputError(
                f"MLflow cannot open its tracking store {self.uri or '(default)'}: {first}",
                where="MLFLOW_TRACKING_URI",
                fix="set MLFLOW_TRACKING_URI to your server (http://host:5000) or to sqlite:///mlflow.db "
                "for a local store (needs SQLAlchemy and Alembic: pip install 'cxrbench[mlflow]')",
            ) from None
        self.run_id = run_id

    def _params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            step = int(summary.get("steps", 0))
            self.log(
                step, {k: v for k, v in summary.items() if isinstance(v, int | float) and math.isfinite(v)}
            )
            for k, v in summary.items():
                if isinstance(v, str):
                    self.client.set_tag(self.run_id, k, v)
        self.client.set_terminated(self.run_id, status="FINISHED" if summary is not None else "KILLED")


class WandbTracker(Tracker):
    """Weights & Biases; its files go to ``RUN/wandb/`` (``WANDB_MODE=offline``: nothing leaves it)."""

    kind = "wandb"

    def __init__(
        self, project: str, name: str, params: dict[str, str], run_id: str | None, run_dir: Path
    ) -> None:
        wandb = _require("wandb", "wandb")
        self.run_id = run_id or uuid.uuid4().hex[:12]
        try:
            self.run = wandb.init(
                project=project,
                name=name,
                id=self.run_id,
                resume="allow",
                dir=str(run_dir),
                config=params,
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise InputError(
                f"W&B could not start a run: {first}",
                where="--tracker wandb",
                fix="log in (`wandb login`) or set WANDB_MODE=offline",
            ) from None

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=int(step))

    def finish(self, summary: dict[str, Any] | None) -> None:
        if summary is not None:
            for k, v in json_safe(summary).items():
                self.run.summary[k] = v
        self.run.finish(exit_code=0 if summary is not None else 1)


def open_tracker(
    kind: str | None,
    run_dir: str | os.PathLike,
    *,
    project: str | None,
    name: str | None,
    params: dict[str, Any],
    resume: bool,
) -> Tracker | None:
    """The tracker run of ``run_dir`` (None without a tracker); a resumed run continues its tracker run."""
    if kind is None:
        return None
    run_dir = Path(run_dir)
    state_path = run_dir / RUN_TRACKER
    previous: dict[str, Any] = {}
    if resume and state_path.is_file():
        try:
            previous = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
    run_id = previous.get("run_id") if previous.get("kind") == kind else None
    project = project or DEFAULT_PROJECT
    name = name or f"{run_dir.parent.name}/{run_dir.name}"
    flat = flat_params(params)
    tracker: Tracker
    if kind == "mlflow":
        tracker = MlflowTracker(project, name, flat, run_id)
        where = {"tracking_uri": tracker.uri}
    elif kind == "wandb":
        tracker = WandbTracker(project, name, flat, run_id, run_dir)
        where = {"dir": str(run_dir)}
    else:
        raise InputError(
            f"unknown tracker {kind!r}", where="--tracker", fix=f"use one of {', '.join(TRACKERS)}"
        )
    atomic_write_json(
        state_path, {"kind": kind, "run_id": tracker.run_id, "project": project, "name": name, **where}
    )
    return tracker
