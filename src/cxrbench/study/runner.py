"""Execute a study's plan: skip what is done, resume what was interrupted, redo what went stale.

:func:`run_study` loops: plan, pick the next step of this invocation whose inputs are done,
execute it under a lock, mark it done, re-plan (findings become known once indexes exist). Each
step writes a marker ``OUT/.steps/<id>.json`` (``running`` before, ``done`` or ``failed`` after),
so a killed study resumes where it stopped: an interrupted training run resumes from its
``last.pt``, an interrupted cache build from its finished chunks.

Under ``torchrun`` every rank runs the loop: training steps run on all ranks (DDP), every other
step on rank 0 while the other ranks wait for its marker. With ``--shard i/n`` an invocation runs
only its share of the training runs (plus the indexes and caches they need; shared work is
guarded by file locks, so shards on one filesystem never build the same cache twice); comparisons
and the report are left to ``cxrbench study report``.
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

from cxrbench.common.errors import CxrbenchError, InputError
from cxrbench.common.fileio import atomic_write_text
from cxrbench.common.progress import console
from cxrbench.common.provenance import now_iso
from cxrbench.study.config import LoadedStudy
from cxrbench.study.executors import EXECUTORS, Context, Executor
from cxrbench.study.plan import build_plan
from cxrbench.study.shard import select_shard, shard_assignment
from cxrbench.study.state import is_finished, marker_path, read_marker, set_aside, step_lock, write_marker
from cxrbench.study.steps import Plan, Step

GATHER_KINDS = ("compare", "shortcut", "pooled", "report")
_DIST_KINDS = ("train", "pretrain", "ssl")  # run on every torchrun rank
_WAIT_POLL_S = 2.0


@dataclass
class RunSummary:
    """What one invocation did."""

    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan: Plan | None = None
    submitted: dict[str, str] = field(default_factory=dict)  # step id -> job id (slurm executor)
    kept: dict[str, str] = field(default_factory=dict)  # step id -> its job still queued or running


def _rank() -> tuple[int, int]:
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


def run_study(
    study: LoadedStudy,
    *,
    shard: tuple[int, int] | None = None,
    kinds: tuple[str, ...] | None = None,
    quiet: bool = False,
    device: str | None = None,
    keep_going: bool = False,
    executors: dict[str, Executor] | None = None,
    executor: str | None = None,
) -> RunSummary:
    """Run (or resume) the study; returns what was executed, skipped and failed.

    Args:
        study: the loaded config.
        shard: ``(i, n)``: only shard i of n of the training runs (1-based); no comparisons/report.
        kinds: only these step kinds (plus what they need), e.g. ``("compare", "report")``.
        quiet: no progress lines (errors still raise).
        device: training/inference device (``cpu``, ``cuda``, ``cuda:1``); automatic when None.
        keep_going: after a failed step, continue with the steps that do not depend on it.
        executors: step kind -> function (tests replace them); defaults to :data:`EXECUTORS`.
        executor: ``local`` (inline, here), ``slurm`` (submit one job per step and return) or
            ``submitit-local`` (one subprocess per step); the config's ``executor.kind`` when None.
    """
    kind = executor or study.config.executor.kind
    if kind != "local":  # one job per step (study/jobs.py); this process only submits or drives them
        from cxrbench.study.jobs import run_with_jobs

        study.out.mkdir(parents=True, exist_ok=True)
        _write_study_copy(study)
        return run_with_jobs(study, kind, shard=shard, kinds=kinds, quiet=quiet, device=device,
                             keep_going=keep_going)
    execs = study_executors(study, executors)
    rank, world = _rank()
    main = rank == 0
    say = (lambda *a, **k: None) if (quiet or not main) else console.print
    study.out.mkdir(parents=True, exist_ok=True)
    if main:
        _write_study_copy(study)
    summary = RunSummary()
    t0 = time.perf_counter()
    done_here: set[str] = set()
    failed: set[str] = set()
    seen_skip: set[str] = set()
    plan = build_plan(study)
    total = sum(1 for s in selected_steps(plan, shard, kinds) if s.status != "done")
    n = 0
    if shard is not None:
        say(f"[bold]shard {shard[0]}/{shard[1]}[/bold]: {_shard_line(plan, shard)}")
    with _process_group(world, device):
        while True:
            steps = selected_steps(plan, shard, kinds)
            for s in steps:
                if s.status == "done" and s.id not in done_here and s.id not in seen_skip:
                    seen_skip.add(s.id)
                    summary.skipped.append(s.id)
            step = _next_step(plan, steps, done_here, failed)
            if step is None:
                break
            n += 1
            total = max(total, n)
            say(
                f"[bold cyan][{n}/{total}][/bold cyan] {step.kind:<8} {step.id.split('/', 1)[-1]}"
                + ("  [yellow](stale: recomputing)[/yellow]" if step.status == "stale" else "")
                + ("  (resuming)" if _was_started(study, step) else "")
            )
            t = time.perf_counter()
            ctx = Context(study=study, plan=plan, quiet=quiet or not main, device=device)
            try:
                ran = _execute(step, ctx, execs[step.kind], main=main, world=world, say=say)
            except CxrbenchError as err:
                failed.add(step.id)
                summary.failed[step.id] = err.one_line()
                if not keep_going:
                    raise
                say(f"  [red]failed[/red]: {err.one_line()}")
                ran = False
            done_here.add(step.id)
            if ran:
                summary.executed.append(step.id)
                say(f"  done in {_fmt_s(time.perf_counter() - t)}")
            elif step.id not in failed:
                summary.skipped.append(step.id)
            plan = build_plan(study)
    summary.blocked = [
        s.id for s in selected_steps(plan, shard, kinds) if s.status != "done" and s.id not in failed
    ]
    summary.seconds = time.perf_counter() - t0
    summary.plan = plan
    if summary.blocked and not summary.failed and main:
        raise InputError(
            f"{len(summary.blocked)} step(s) could not run: {', '.join(summary.blocked[:5])}",
            where=str(study.path),
            fix="their inputs are missing; run the steps they need (e.g. every shard) first",
        )
    return summary


@contextlib.contextmanager
def _process_group(world: int, device: str | None) -> Iterator[None]:
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


def _next_step(plan: Plan, steps: list[Step], done_here: set[str], failed: set[str]) -> Step | None:
    for s in steps:
        if s.status == "done" or s.id in done_here or s.deferred:
            continue
        if any(d in failed for d in plan.closure({s.id}) - {s.id}):
            continue
        # done_here: finished in this process (on torchrun ranks > 0 the marker may still be on its way)
        if all(plan.by_id[d].status == "done" or d in done_here for d in s.deps):
            return s
    return None


def _was_started(study: LoadedStudy, step: Step) -> bool:
    m = read_marker(study.out, step.id)
    return step.status == "pending" and m is not None and m.get("key") == step.key


def _execute(step: Step, ctx: Context, fn: Executor, *, main: bool, world: int, say) -> bool:
    """Run one step with its marker and lock; False when another process finished it meanwhile."""
    out = ctx.study.out
    if world > 1 and not main:
        if step.kind not in _DIST_KINDS:
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
    rank, world = _rank()
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
    with _process_group(world, device):
        ctx = Context(study=study, plan=plan, quiet=quiet or rank != 0, device=device)
        return _execute(step, ctx, study_executors(study, executors)[step.kind], main=rank == 0,
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

    return {k: tracked(fn) if k in _DIST_KINDS else fn for k, fn in execs.items()}


def _wait_for(out: Path, step: Step, statuses: tuple[str, ...]) -> str:
    """torchrun ranks > 0: wait until rank 0's marker of this step has one of ``statuses``."""
    while True:
        m = read_marker(out, step.id)
        if m is not None and m.get("key") == step.key and m.get("status") in statuses:
            if m["status"] == "failed":
                raise InputError(f"rank 0 failed on {step.id}: {m.get('error')}", where=str(out))
            return str(m["status"])
        time.sleep(_WAIT_POLL_S)


def _write_study_copy(study: LoadedStudy) -> None:
    """``OUT/study.yaml``: the validated config as it was run (with its hash). A file of that name
    that cxrbench did not write (e.g. the user's own config) is never replaced."""
    import yaml

    doc = {
        "config_hash": study.config.config_hash(),
        "source": str(study.path),
        "config": study.config.model_dump(mode="json", exclude_none=True),
    }
    path = study.layout.study_copy
    text = yaml.safe_dump(doc, sort_keys=False)
    if path.is_file():
        if path.resolve() == study.path.resolve() or not _is_study_copy(path):
            raise InputError(f"{path.name} in the study folder is not the copy cxrbench writes there, and "
                             "it would be replaced", where=str(path),
                             fix="keep your config outside the study folder, or choose another --out")
        if path.read_text(encoding="utf-8") == text:
            return
    atomic_write_text(path, text)


def _is_study_copy(path: Path) -> bool:
    from cxrbench.common.yamlio import load_yaml

    try:
        doc = load_yaml(path, "study copy")[0]  # bounded: the file may be anyone's
    except InputError:
        return False
    return isinstance(doc, dict) and set(doc) == {"config_hash", "source", "config"}


def _shard_line(plan: Plan, shard: tuple[int, int]) -> str:
    groups = shard_assignment(plan, shard[1])
    runs = [s for s in plan.of_kind("train", "pretrain") if groups.get(s.group) == shard[0]]
    return f"{len(runs)} of {len(plan.of_kind('train', 'pretrain'))} training runs"


def _fmt_s(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


# --- the dry-run view ---------------------------------------------------------------------------------


def describe_plan(
    plan: Plan, shard: tuple[int, int] | None = None, kinds: tuple[str, ...] | None = None
) -> str:
    """A plain-text view of the plan: counts per kind and status, then every step with its status."""
    steps = selected_steps(plan, shard, kinds)
    groups = shard_assignment(plan, shard[1]) if shard else {}
    lines = [
        f"study {plan.study.config.name}: {len(steps)} steps"
        + (f" (shard {shard[0]}/{shard[1]})" if shard else "")
        + f" -> {plan.study.out}",
        f"config hash {plan.study.config.config_hash()}",
        "",
    ]
    statuses = ("done", "pending", "stale", "deferred")
    lines.append(f"{'kind':<10}" + "".join(f"{s:>10}" for s in statuses))
    for kind in dict.fromkeys(s.kind for s in steps):
        row = [sum(1 for s in steps if s.kind == kind and s.status == st) for st in statuses]
        lines.append(f"{kind:<10}" + "".join(f"{v:>10}" for v in row))
    lines.append("")
    mark = {"done": "=", "pending": "+", "stale": "~", "deferred": "?"}
    for s in steps:
        shard_txt = f"  shard {groups[s.group]}" if s.group in groups else ""
        lines.append(f" {mark[s.status]} {s.id:<58} {s.status:<8} {s.key[:10]}{shard_txt}")
    lines.append("")
    lines.append(
        "= done (skipped)   + to run   ~ stale (config changed: set aside, recomputed)   "
        "? known after indexing"
    )
    from cxrbench.study.facts import legacy_cache_notes

    lines += [f"note: {n}" for n in [*plan.notes, *legacy_cache_notes(plan)]]
    return "\n".join(lines)


def report_study(
    study: LoadedStudy, *, quiet: bool = False, executors: dict[str, Executor] | None = None
) -> tuple[Path, RunSummary]:
    """Gather: run the comparisons whose evaluations exist (all shards' results), then the report.

    Comparisons with missing evaluations are left out and listed in the report; the report itself
    is always re-rendered. Returns the report's index.html and what was done.
    """
    execs = {**EXECUTORS, **(executors or {})}
    say = (lambda *a, **k: None) if quiet else console.print
    summary = RunSummary()
    t0 = time.perf_counter()
    plan = build_plan(study)
    for step in plan.of_kind("compare", "shortcut", "pooled"):
        if step.status == "done":
            summary.skipped.append(step.id)
        elif all(plan.by_id[d].status == "done" for d in step.deps):
            say(f"[bold cyan]{step.kind:8s}[/bold cyan] {step.id.split('/', 1)[-1]}")
            ctx = Context(study=study, plan=plan, quiet=quiet)
            if _execute(step, ctx, execs[step.kind], main=True, world=1, say=say):
                summary.executed.append(step.id)
        else:
            summary.blocked.append(step.id)
    plan = build_plan(study)
    report = plan["report"]
    say(f"[bold cyan]report[/bold cyan]   {report.out}")
    report.status = "stale" if report.status == "done" else report.status
    if report.status == "stale":
        marker_path(study.out, report.id).unlink(missing_ok=True)
        report.status = "pending"
    _execute(
        report, Context(study=study, plan=plan, quiet=quiet), execs["report"], main=True, world=1, say=say
    )
    summary.executed.append(report.id)
    summary.seconds = time.perf_counter() - t0
    summary.plan = build_plan(study)
    return report.out / "index.html", summary
