"""`cxrbench predict`: probabilities per finding for new PNG/JPEG/DICOM files."""

from __future__ import annotations

from pathlib import Path

import typer

HELP = """Predict the run's findings on image files (PNG 8/16-bit, JPEG, DICOM).

Every file is decoded and preprocessed exactly like the run's training cache (size, resize mode,
equalization recorded in RUN/best.json), then scored by the best checkpoint. The CSV has one row
per file: `file`, `p_<finding>` (probability) and, when the run was evaluated (`cxrbench evaluate`
wrote thresholds chosen on the validation split), `pred_<finding>` (positive/negative) and
`threshold_<finding>`.

With --saliency OUT/, one overlay PNG per file and finding is written there (OUT/<stem>_<finding>.png,
listed in OUT/saliency.json): Grad-CAM (--saliency-method gradcam, ViTs and ConvNeXts; every ViT
block's attention input) or attention rollout (rollout, ViTs; the same map for every finding), over
the image as the model sees it. Needs the saliency extra: pip install 'cxrbench[saliency]'.

Example:

  cxrbench predict runs/nih-dinov2 scan1.dcm scan2.png --out predictions.csv --saliency maps/
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("predict", help=HELP, no_args_is_help=True)
    def predict_command(
        run: Path = typer.Argument(..., help="Trained run folder (holds best.safetensors + best.json)."),
        images: list[str] = typer.Argument(..., help="Image files (.png, .jpg/.jpeg, .dcm), folders (every "
                                           "image inside) or glob patterns ('scans/*.dcm')."),
        out: Path = typer.Option(None, "--out", "-o", help="Write the CSV here (default: stdout)."),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per forward pass."),
        device: str = typer.Option(None, "--device",
                                   help="cpu, cuda or cuda:N (default: cuda if available)."),
        skip_bad: bool = typer.Option(
            False, "--skip-bad", help="Leave unreadable files out (listed on stderr) instead of stopping."),
        saliency: Path = typer.Option(None, "--saliency",
                                      help="Write saliency overlays (a PNG per file and finding) here."),
        saliency_method: str = typer.Option("gradcam", "--saliency-method",
                                            help="gradcam (ViT, ConvNeXt) or rollout (ViT)."),
    ) -> None:
        from cxrbench.common.fileio import atomic_write_text, check_writable
        from cxrbench.evaluate.predict import predict_files

        if out is not None:
            check_writable(out)
        df = predict_files(run, images, batch_size=batch_size, device=device, skip_bad=skip_bad,
                           saliency_dir=saliency, saliency_method=saliency_method)
        for name, reason in df.attrs.get("skipped", []):
            typer.echo(f"skipped: {name}: {reason}", err=True)
        if saliency is not None:
            n_maps = len(df) * sum(1 for c in df.columns if str(c).startswith("p_"))
            typer.echo(f"wrote {n_maps} saliency overlay(s) to {saliency}", err=True)
        text = df.to_csv(index=False, float_format="%.6g")
        if out is None:
            typer.echo(text, nl=False)
        else:
            atomic_write_text(out, text)
            typer.echo(f"wrote {len(df)} prediction(s) to {out}", err=True)
