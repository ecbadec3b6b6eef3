"""`cxrbench demo`: a complete small study on synthetic phantoms, on the CPU, with its report."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Run the embedded default study: no data, no internet, CPU, a few minutes.

Generates phantom radiographs for a "source" hospital and two "target" hospitals (other
detectors and processing), then runs a complete study with the same runner as `cxrbench study
run`: a small ViT trained from scratch (random), the same ViT pretrained supervised on the source
site and fine-tuned on each target (source-pretrained), and DINOv2 ViT-S/14 and ImageNet-21k
ViT-B/16 when their weights are already cached (otherwise one line says how to enable them).
Evaluation with bootstrap CIs, paired comparisons, external validation between the targets, and
the report (OUT/report/index.html). Prints the report path and the main table.

Running it again with nothing changed skips every step (seconds). OUT/demo.yaml is the study it
ran: edit it and rerun with `cxrbench study run OUT/demo.yaml`.

Examples:

  cxrbench demo

  cxrbench demo --out /tmp/demo --tiny
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("demo", help=HELP)
    def demo_command(
        out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output folder of the demo study."),
        tiny: bool = typer.Option(False, "--tiny", help="A much smaller study for smoke tests (about 4 "
                                  "CPU-minutes: 2 minutes on a quiet 2-core machine, more on a busy one)."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final table and path."),
    ) -> None:
        from cxrbench.study.demo import run_demo

        result = run_demo(out, tiny=tiny, quiet=quiet, device=device)
        for line in result.skipped:
            typer.echo(f"note: {line}")
        typer.echo("")
        typer.echo(result.table)
        typer.echo("")
        typer.echo(f"report: {result.report}")
        typer.echo(
            f"({result.executed} step(s) run in {result.seconds:.0f} s; study config: {result.config})"
        )
