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

import os
import time
from pathlib import Path

from cxrbench.common.errors import CxrbenchError, InputError, spell
from cxrbench.common.fileio import atomic_write_text
from cxrbench.common.progress import console
from cxrbench.study.config import LoadedStudy
from cxrbench.study.execute import (
    GATHER_KINDS,
    RunSummary,
    execute,
    execute_step,
    process_group,
    rank_and_world,
    selected_steps,
    study_executors,
)
from cxrbench.study.executors import EXECUTORS, Context, Executor
from cxrbench.study.localjobs import drive_local
from cxrbench.study.plan import build_plan
from cxrbench.study.shard import shard_assignment
from cxrbench.study.slurm import submit_study
from cxrbench.study.state import marker_path, read_marker
from cxrbench.study.steps import Plan, Step

__all__ = ["GATHER_KINDS", "RunSummary", "describe_plan", "execute_step", "report_study", "run_study",
           "selected_steps", "study_executors"]

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
    """Run (or resume) the study, as ``cxrbench study run``; returns what was done and where the
    report and results are.

    Args:
        study: the loaded config (:func:`~cxrbench.study.load.load_study`: a YAML file or a dict).
        shard: ``(i, n)``: only shard i of n of the training runs (1-based); no comparisons/report.
        kinds: only these step kinds (plus what they need), e.g. ``("compare", "report")``.
        quiet: no progress lines (errors still raise).
        device: training/inference device (``cpu``, ``cuda``, ``cuda:1``); automatic when None.
        keep_going: after a failed step, continue with the steps that do not depend on it.
        executors: step kind -> function (tests replace them); defaults to :data:`EXECUTORS`.
        executor: ``local`` (inline, here), ``slurm`` (submit one job per step and return) or
            ``submitit-local`` (one subprocess per step); the config's ``executor.kind`` when None.

    Returns:
        :class:`~cxrbench.study.execute.RunSummary`: ``executed``, ``skipped``, ``failed`` step ids,
        ``seconds``; ``out`` (the study folder), ``report`` (``report/index.html``) and ``results``
        (``report/results.csv``) paths, ``load_results()`` (the typed DataFrame).

    Example::

        study = cxrbench.load_study("configs/study-2024.yaml", out="/scratch/study-2024")
        summary = cxrbench.run_study(study, device="cuda")   # resumable: rerun to continue
        print(summary.report)
        df = summary.load_results()
    """
    kind = executor or study.config.executor.kind
    if kind != "local":  # one job per step (study/jobs.py); this process only submits or drives them
        study.out.mkdir(parents=True, exist_ok=True)
        _write_study_copy(study)
        summary = _run_with_jobs(study, kind, shard=shard, kinds=kinds, quiet=quiet, device=device,
                                 keep_going=keep_going)
    else:
        summary = _run_here(study, shard=shard, kinds=kinds, quiet=quiet, device=device,
                            keep_going=keep_going, executors=executors)
    summary.out = study.out
    return summary


def _run_here(study: LoadedStudy, *, shard: tuple[int, int] | None, kinds: tuple[str, ...] | None,
              quiet: bool, device: str | None, keep_going: bool,
              executors: dict[str, Executor] | None) -> RunSummary:
    """The local executor: every step inline, in dependency order (all ranks under torchrun)."""
    execs = study_executors(study, executors)
    rank, world = rank_and_world()
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
    with process_group(world, device):
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
                ran = execute(step, ctx, execs[step.kind], main=main, world=world, say=say)
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


def _run_with_jobs(
    study: LoadedStudy,
    kind: str,
    *,
    shard: tuple[int, int] | None = None,
    kinds: tuple[str, ...] | None = None,
    quiet: bool = False,
    device: str | None = None,
    keep_going: bool = False,
) -> RunSummary:
    """``slurm``: submit every step not done (returns at once); ``submitit-local``: run them here, one
    subprocess per step, in dependency order."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(
            f"{spell(f'--executor {kind}', f'executor={kind!r}')} under torchrun",
            where=spell("--executor"),
            fix="run `cxrbench study run` once (not under torchrun); multi-GPU runs come from "
            "executor.gpus_per_run",
        )
    if kind == "slurm":
        return submit_study(study, shard=shard, kinds=kinds, device=device, quiet=quiet)
    if kind == "submitit-local":
        return drive_local(study, shard=shard, kinds=kinds, device=device, quiet=quiet, keep_going=keep_going)
    raise InputError(
        f"unknown executor {kind!r}", where=spell("--executor"), fix="use local, slurm or submitit-local"
    )


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
    runs = [s for s in plan.of_kind("train", "pretrain")
            if s.group is not None and groups.get(s.group) == shard[0]]
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
    from cxrbench.study.power import planning_lines

    lines += [f"note: {n}" for n in [*plan.notes, *legacy_cache_notes(plan)]]
    lines += ["", *planning_lines(plan)]
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
            if execute(step, ctx, execs[step.kind], main=True, world=1, say=say):
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
    execute(
        report, Context(study=study, plan=plan, quiet=quiet), execs["report"], main=True, world=1, say=say
    )
    summary.executed.append(report.id)
    summary.seconds = time.perf_counter() - t0
    summary.plan = build_plan(study)
    summary.out = study.out
    return study.layout.report_html, summary
