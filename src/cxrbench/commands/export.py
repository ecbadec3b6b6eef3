"""`cxrbench export`: a trained run as a timm / Hugging Face hub folder or as ONNX."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Export the run's best model into the folder OUT.

--format hub (default) writes what `timm.create_model("local-dir:OUT", pretrained=True)` loads as
is (and `hf-hub:REPO` once pushed): config.json (architecture, num_classes, label_names, input
size, mean/std), model.safetensors, thresholds.json (the validation thresholds) and README.md, a
model card (intended use, training data and label definitions, metrics with CIs from the run's
evaluations, limitations, licences). --push REPO then uploads those files to the Hugging Face hub
(needs the network and a token: `hf auth login`).

--format onnx writes model.onnx (input `image` [batch, 3, S, S], outputs `logits` and
`probabilities`; dynamic batch) with the same config.json, thresholds.json and card, and checks it
with onnxruntime against PyTorch on the same inputs (the max abs difference is printed; the export
fails above --atol). Needs `pip install 'cxrbench[export]'`.

OUT may be new, empty, or an earlier export: files the export did not write are never replaced (it
stops with an error instead) and files with other names are left alone.

Examples:

  cxrbench export runs/nih-dinov2 export/nih-dinov2

  cxrbench export runs/nih-dinov2 export/nih-dinov2 --push my-lab/cxr-nih-dinov2

  cxrbench export runs/nih-dinov2 export/nih-dinov2-onnx --format onnx
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("export", help=HELP, no_args_is_help=True)
    def export_command(
        run: Path = typer.Argument(..., help="Trained run folder (holds best.safetensors + best.json)."),
        out: Path = typer.Argument(..., help="Export folder (new, empty, or an earlier export)."),
        fmt: str = typer.Option("hub", "--format", "-f", help="hub or onnx."),
        push: str = typer.Option(
            None,
            "--push",
            show_default=False,
            help="Also upload to this Hugging Face hub model repository (ORG/NAME).",
        ),
        atol: float = typer.Option(1e-4, "--atol", help="onnx: largest accepted |onnxruntime - PyTorch|."),
        opset: int = typer.Option(17, "--opset", help="onnx: ONNX opset version."),
    ) -> None:
        from cxrbench.common.validation import check_choice
        from cxrbench.export.hub import FORMATS, export_run

        check_choice("--format", fmt, FORMATS)
        result = export_run(run, out, fmt, push=push, atol=atol, opset=opset)
        typer.echo(f"wrote {', '.join(result.files)} to {result.out}")
        if result.max_abs_diff is not None:
            typer.echo(
                f"onnxruntime vs PyTorch on the same inputs: max abs difference {result.max_abs_diff:.3g}"
            )
        for note in result.notes:
            typer.echo(f"note: {note}", err=True)
        if result.url:
            typer.echo(f"pushed to {result.url}")
