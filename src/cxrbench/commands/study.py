"""`cxrbench study run|report|status|cancel`: the whole matrix of a study config, resumable, shardable,
inline or as SLURM jobs."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cxrbench.study.steps import KINDS

HELP = """Run a whole study from one YAML config: datasets x recipes x initializations x seeds.

The config (see docs/study.md and configs/study-2024.yaml) names the datasets, preprocessing
recipes, initializations (any --init, plus domain:DATASET = first trained supervised on that
dataset), the training recipe, seeds, evaluation, comparisons and external validations.
"""

RUN_HELP = """Plan and run every step of the study; skip what is done; resume what was interrupted.

Steps: index -> cache (per dataset and recipe) -> domain pretraining -> fine-tuning -> evaluation
-> external validation -> comparisons -> report (STUDY_OUT/report/index.html). Each step is keyed
by a hash of its settings and inputs: an unchanged step is skipped, a changed one (and everything
after it) is recomputed, its old output set aside under STUDY_OUT/.stale/. A killed study resumes
where it stopped (training from its last checkpoint).

--dry-run prints the plan (what is done, what would run) and exits.

Several machines: give each the same config and --shard i/n (i = 1..n); each trains and evaluates
only its share of the runs (plus the indexes and caches those need), then run
`cxrbench study report STUDY.yaml` once on the gathered STUDY_OUT. Several GPUs in one machine:
either one process per GPU with --shard (CUDA_VISIBLE_DEVICES=k), or DDP per run with
`torchrun --nproc_per_node=N -m cxrbench study run STUDY.yaml`.

A SLURM cluster: --executor slurm (or `executor: {kind: slurm, partition: ..., gpus_per_run: ...}`
in the config) submits every step not done as one job, with afterok dependencies along the step
graph, and returns; `cxrbench study status STUDY.yaml` follows it, rerunning the same command
resubmits only what is neither done nor queued. --executor submitit-local runs each step as a local
subprocess the same way (a dry run of the cluster setup on one machine).

Examples:

  cxrbench study run configs/study-2024.yaml --dry-run

  cxrbench study run configs/study-2024.yaml --out /scratch/study-2024

  CUDA_VISIBLE_DEVICES=1 cxrbench study run configs/study-2024.yaml --shard 2/4

  cxrbench study run configs/study-2024.yaml --executor slurm
"""

STATUS_HELP = """Where every step of a study stands: done, running, queued, failed, cancelled or not started.

Reads the step markers and, for steps submitted with --executor slurm, their jobs' states (sacct, or
squeue); a failure is shown with its error and the job's log file.
"""

CANCEL_HELP = """Cancel the SLURM jobs this study submitted that are still queued or running.

Only the jobs recorded in STUDY_OUT/.jobs/ are cancelled; finished steps keep their results, and
`cxrbench study run STUDY.yaml --executor slurm` resubmits the rest.
"""

REPORT_HELP = """Gather every finished result of a study into its report (after sharded runs, or any time).

Runs the comparisons whose evaluations all exist and renders STUDY_OUT/report/: index.html
(self-contained), report.md and results.csv (one row per dataset x init x finding, mean included).
Missing results are listed at the top of the report.
"""


def _load(config: Path, out: Path | None):
    from cxrbench.study.load import load_study

    return load_study(config, out=out)


def register(app: typer.Typer) -> None:
    """Add the `study` command group to app."""
    study_app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)

    @study_app.command("run", help=RUN_HELP, no_args_is_help=True)
    def run_command(
        config: Path = typer.Argument(..., help="The study YAML file.", show_default=False),
        dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Print the plan and exit."),
        shard: str = typer.Option(
            None, "--shard", help="Run only shard i of n of the training runs, e.g. 2/4.", show_default=False
        ),
        out: Path = typer.Option(
            None, "--out", "-o", help="Study output folder [the config's 'out'].", show_default=False
        ),
        device: str = typer.Option(None, "--device", help="cpu, cuda or cuda:N [auto].", show_default=False),
        only: str = typer.Option(
            None,
            "--only",
            help="Only these step kinds (and what they need), comma-separated: " + ", ".join(KINDS) + ".",
            show_default=False,
        ),
        keep_going: bool = typer.Option(
            False, "--keep-going", "-k", help="After a failed step, go on with the steps that do not need it."
        ),
        executor: str = typer.Option(
            None, "--executor", "-e", show_default=False,
            help="Where steps run: local (here, one after the other), slurm (one job per step, submitted "
            "with dependencies), submitit-local (one subprocess per step) [the config's executor.kind, "
            "local].",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        from cxrbench.common.errors import InputError
        from cxrbench.common.validation import check_choice
        from cxrbench.study.plan import build_plan, parse_shard
        from cxrbench.study.runner import describe_plan, run_study
        from cxrbench.study.runtime_config import EXECUTOR_KINDS

        shard_t = parse_shard(shard) if shard else None
        if executor is not None:
            check_choice("--executor", executor, EXECUTOR_KINDS)
        study = _load(config, out)
        kind = executor or study.config.executor.kind
        kinds = None
        if only:
            kinds = tuple(check_choice("--only", k.strip(), KINDS) for k in only.split(",") if k.strip())
        if dry_run:
            typer.echo(describe_plan(build_plan(study), shard_t, kinds))
            return
        summary = run_study(
            study, shard=shard_t, kinds=kinds, quiet=quiet, device=device, keep_going=keep_going,
            executor=kind,
        )
        if kind == "slurm":
            more = f" --out {out}" if out else ""
            typer.echo(f"{len(summary.submitted)} job(s) submitted, {len(summary.kept)} still queued or "
                       f"running, {len(summary.skipped)} step(s) done, {summary.seconds:.1f} s; follow it "
                       f"with: cxrbench study status {config}{more}")
            if summary.blocked:
                typer.echo(f"{len(summary.blocked)} step(s) wait for inputs not submitted here: "
                           + ", ".join(summary.blocked[:5]), err=True)
            return
        if summary.failed:
            for sid, msg in summary.failed.items():
                typer.echo(f"failed: {sid}: {msg}", err=True)
            raise InputError(
                f"{len(summary.failed)} step(s) failed, {len(summary.blocked)} could not run",
                where=str(config),
                fix="fix the errors above and run the same command again (finished steps are kept)",
            )
        if not quiet and os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks
            typer.echo(
                f"{len(summary.executed)} step(s) run, {len(summary.skipped)} up to date, "
                f"{summary.seconds:.1f} s"
            )
            if shard_t is not None:
                typer.echo(
                    f"shard {shard_t[0]}/{shard_t[1]} finished; when every shard has finished, run: "
                    f"cxrbench study report {config}" + (f" --out {out}" if out else "")
                )
            elif summary.report is not None:
                typer.echo(f"report: {summary.report}")

    @study_app.command("report", help=REPORT_HELP, no_args_is_help=True)
    def report_command(
        config: Path = typer.Argument(..., help="The study YAML file.", show_default=False),
        out: Path = typer.Option(
            None, "--out", "-o", help="Study output folder [the config's 'out'].", show_default=False
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        from cxrbench.study.runner import report_study

        study = _load(config, out)
        path, summary = report_study(study, quiet=quiet)
        if summary.blocked and not quiet:
            typer.echo(
                f"{len(summary.blocked)} comparison(s) wait for missing evaluations: "
                + ", ".join(summary.blocked[:5]),
                err=True,
            )
        typer.echo(f"report: {path}")

    @study_app.command("status", help=STATUS_HELP, no_args_is_help=True)
    def status_command(
        config: Path = typer.Argument(..., help="The study YAML file.", show_default=False),
        out: Path = typer.Option(
            None, "--out", "-o", help="Study output folder [the config's 'out'].", show_default=False
        ),
        show_all: bool = typer.Option(False, "--all", "-a", help="List done steps too."),
    ) -> None:
        from cxrbench.study.jobs import format_status, study_status

        rows = study_status(_load(config, out))
        typer.echo(format_status(rows))
        if show_all:
            for r in rows:
                if r.status == "done":
                    typer.echo(f"{'done':<9} {r.id}")

    @study_app.command("cancel", help=CANCEL_HELP, no_args_is_help=True)
    def cancel_command(
        config: Path = typer.Argument(..., help="The study YAML file.", show_default=False),
        out: Path = typer.Option(
            None, "--out", "-o", help="Study output folder [the config's 'out'].", show_default=False
        ),
    ) -> None:
        from cxrbench.study.jobs import cancel_study

        ids = cancel_study(_load(config, out))
        typer.echo(f"cancelled {len(ids)} job(s)" + (f": {', '.join(ids)}" if ids else ""))

    _add_example(study_app)
    app.add_typer(study_app, name="study")


EXAMPLE_HELP = """Write an example study config shipped with cxrbench (for installs without a checkout).

Without NAME, lists the examples. study-2024 is the reference study (six datasets x three
initializations x three seeds; configs/study-2024.yaml in a checkout), study-dinov3 its DINOv3
follow-up, demo the phantom study of `cxrbench demo`. Point CXRBENCH_DATA at your datasets (or edit
the roots), then `cxrbench study run NAME.yaml --dry-run`.

Examples:

  cxrbench study example

  cxrbench study example study-2024 --out my-study.yaml
"""


def _add_example(study_app: typer.Typer) -> None:
    """Add `study example` to the study group."""

    @study_app.command("example", help=EXAMPLE_HELP)
    def example_command(
        name: str = typer.Argument(None, help="The example to write (none: list them).", show_default=False),
        out: Path = typer.Option(
            None, "--out", "-o", help="File (or folder) to write [./NAME.yaml].", show_default=False
        ),
    ) -> None:
        from cxrbench.study.examples import EXAMPLES, write_example

        if name is None:
            for key, what in EXAMPLES.items():
                typer.echo(f"{key:<14} {what}")
            return
        path, written = write_example(name, out)
        typer.echo(f"{'wrote' if written else 'up to date:'} {path}; next: cxrbench study run {path} "
                   "--dry-run")
