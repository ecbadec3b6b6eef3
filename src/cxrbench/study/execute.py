"""Running one step of a study with its marker and lock: what the inline runner, a SLURM job and a
submitit-local job all do (:func:`execute_step`), and the pieces the runner and the job executors share.

Each step writes a marker ``OUT/.steps/<id>.json`` (``running`` before, ``done`` or ``failed`` after),
so a killed study resumes where it stopped. Under ``torchrun`` training steps run on every rank (DDP),
every other step on rank 0 while the other ranks wait for its marker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.common.errors import CxrbenchError, InputError
from cxrbench.common.layout import RESULTS_CSV
from cxrbench.common.progress import console
from cxrbench.common.provenance import now_iso
from cxrbench.study.config import LoadedStudy
from cxrbench.study.executors import EXECUTORS, Context, Executor
from cxrbench.study.layout import StudyLayout
from cxrbench.study.plan import build_plan
from cxrbench.study.shard import select_shard
from cxrbench.study.state import is_finished, read_marker, set_aside, step_lock, write_marker
from cxrbench.study.steps import Plan, Step

GATHER_KINDS = ("compare", "shortcut", "pooled", "report")
DIST_KINDS = ("train", "pretrain", "ssl", "tune")  # run on every torchrun rank
_WAIT_POLL_S = 2.0


@dataclass
class RunSummary:
    """What one invocation did, and where the study's outputs are.

    ``executed`` / ``skipped`` / ``blocked``: step ids; ``failed``: step id -> its one-line error;
    ``seconds``: wall time; ``plan``: the study's steps; ``submitted`` / ``kept``: step id -> job id
    (job executors); ``out``: the study folder; :attr:`report` and :attr:`results` the report's
    ``index.html`` and ``results.csv`` (None until the report step wrote them);
    :meth:`load_results` the results as a typed DataFrame.
    """

    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan: Plan | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # step id -> job id (slurm executor)
    kept: dict[str, str] = field(default_factory=dict)  # step id -> its job still queued or running
    out: Path | None = None  # the study folder

    @property
    def report(self) -> Path | None:
        """The report's ``index.html`` when it exists."""
        path = StudyLayout(self.out).report_html if self.out is not None else None
        return path if path is not None and path.is_file() else None

    @property
    def results(self) -> Path | None:
        """The report's ``results.csv`` (one row per dataset x recipe x condition x seed x init x
        finding) when it exists."""
        path = StudyLayout(self.out).report_dir / RESULTS_CSV if self.out is not None else None
        return path if path is not None and path.is_file() else None

    def load_results(self) -> pd.DataFrame:
        """``results.csv`` as a typed DataFrame (:func:`cxrbench.report.results_table.load_results`)."""
        from cxrbench.report.results_table import load_results

        if self.results is None:
            raise InputError("the study has no results.csv yet", where=str(self.out),
                             fix="run the study to its end (its report step writes it)")
        return load_results(self.results)


def rank_and_world() -> tuple[int, int]:
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def selected_steps(plan: Plan, shard: tuple[int, int] | None, kinds: tuple[str, ...] | None) -> list[Step]:
    """The steps this invocation is responsible for, in order."""
    steps = select_shard(plan, shard)
    if shard is not None:
        steps = [s for s in steps if s.kind not in GATHER_KINDS]
    if kinds is not None:
        keep = plan.closure({s.id for s in steps if s.kind in kinds})
        steps = [s for s in steps if s.id in keep]
    return steps


@contextlib.contextmanager
def process_group(world: int, device: str | None) -> Iterator[None]:
    """Under torchrun: one process group for the whole study, kept open across training runs.

    ``train()`` joins this group and leaves it open (``distributed.destroy`` only ends a group its
    own ``init`` created): re-creating the default group for every run would race on the
    rendezvous store when the ranks reach it at different times (they poll step markers between).
    """
    if world <= 1:
        yield
        return
    from cxrbench.common import distributed as dist_

    env = dist_.detect()
    env = dist_.init(dist_.device_for(env, device), env)
    try:
        yield
    finally:
        dist_.destroy(env)


def execute(step: Step, ctx: Context, fn: Executor, *, main: bool, world: int, say) -> bool:
    """Run one step with its marker and lock; False when another process finished it meanwhile."""
    out = ctx.study.out
    if world > 1 and not main:
        if step.kind not in DIST_KINDS:
            _wait_for(out, step, ("done", "failed"))
            return False
        # DDP: every rank trains, rank 0 writes; start once rank 0 has set the folder up
        if _wait_for(out, step, ("running", "done", "failed")) == "done":
            return False
        fn(step, ctx)
        return True
    with step_lock(out, step.id, on_busy=lambda: say(f"  waiting: another process is running {step.id}")):
        if is_finished(out, step):
            return False  # another shard finished it while we waited for the lock
        if step.status == "stale":
            set_aside(out, step)
        started = now_iso()
        t = time.perf_counter()
        write_marker(out, step, "running", started=started)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn(step, ctx)
            _show_warnings(caught, say)
        except CxrbenchError as err:
            write_marker(out, step, "failed", started=started, error=err.one_line())
            raise
        except SystemExit as err:  # a job preempted or timed out and requeued (submitit's handler exits)
            write_marker(out, step, "interrupted", started=started, error=f"SystemExit: {err}")
            raise
        except BaseException as err:
            write_marker(out, step, "failed", started=started, error=f"{type(err).__name__}: {err}")
            raise
        missing = [c for c in step.complete if not (step.out / c).exists()]
        if missing:
            write_marker(out, step, "failed", started=started, error=f"missing outputs {missing}")
            raise RuntimeError(f"step {step.id} finished without writing {missing}")
        write_marker(out, step, "done", started=started, seconds=round(time.perf_counter() - t, 3))
    return True


def _show_warnings(caught: list, say, limit: int = 6) -> None:
    """One line per distinct warning of a step (the stages also record them in their outputs)."""
    msgs = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    for m in msgs[:limit]:
        say(f"  [yellow]warning[/yellow]: {m}", highlight=False, soft_wrap=True)
    if len(msgs) > limit:
        say(f"  [yellow]... and {len(msgs) - limit} more warning(s)[/yellow]")


# --- one step by id: what a job of the SLURM / submitit executors runs ---------------------------------


def execute_step(study: LoadedStudy, step_id: str, *, key: str | None = None, device: str | None = None,
                 quiet: bool = True, executors: dict[str, Executor] | None = None) -> bool:
    """Run one step of the study (its inputs must be done), with its marker and lock, on every rank.

    ``key``: the step key the job was submitted for; a different key (the config or the data changed
    since) is refused rather than computing something else. Returns False when the step was done.
    """
    rank, world = rank_and_world()
    say = (lambda *a, **k: None) if (quiet or rank) else console.print
    plan = build_plan(study)
    step = plan.by_id.get(step_id)
    if step is None or step.deferred:
        raise InputError(f"step {step_id} is {'not in' if step is None else 'not yet known to'} the plan",
                         where=str(study.path), fix="submit the study again (`cxrbench study run`)")
    if key is not None and step.key != key:
        raise InputError(f"step {step_id} changed since it was submitted (key {key[:10]}, now "
                         f"{step.key[:10]})", where=str(study.path),
                         fix="submit the study again (`cxrbench study run`)")
    if step.status == "done":
        return False
    waiting = [d for d in step.deps if plan.by_id[d].status != "done"]
    if waiting:
        raise InputError(f"step {step_id} needs {', '.join(waiting[:3])}, which are not done",
                         where=str(study.path), fix="run those first (a dependency of the job failed?)")
    with process_group(world, device):
        ctx = Context(study=study, plan=plan, quiet=quiet or rank != 0, device=device)
        return execute(step, ctx, study_executors(study, executors)[step.kind], main=rank == 0,
                        world=world, say=say)


def study_executors(study: LoadedStudy, executors: dict[str, Executor] | None = None) -> dict[str, Executor]:
    """The executor of every step kind; with a ``tracker:`` section, training runs log to it (runtime
    keys: the step keys do not move)."""
    execs = {**EXECUTORS, **(executors or {})}
    spec = study.config.tracker
    if spec is None:
        return execs

    def tracked(fn: Executor) -> Executor:
        def run(step: Step, ctx: Context) -> Any:
            runtime = {**step.params.runtime, "tracker": spec.kind, "tracker_name": step.id,
                       "tracker_project": spec.project or study.config.name}
            params = dataclasses.replace(step.params, runtime=runtime)
            return fn(dataclasses.replace(step, params=params), ctx)
        return run

    return {k: tracked(fn) if k in DIST_KINDS else fn for k, fn in execs.items()}


def _wait_for(out: Path, step: Step, statuses: tuple[str, ...]) -> str:
    """torchrun ranks > 0: wait until rank 0's marker of this step has one of ``statuses``."""
    while True:
        m = read_marker(out, step.id)
        if m is not None and m.get("key") == step.key and m.get("status") in statuses:
            if m["status"] == "failed":
                raise InputError(f"rank 0 failed on {step.id}: {m.get('error')}", where=str(out))
            return str(m["status"])
        time.sleep(_WAIT_POLL_S)
