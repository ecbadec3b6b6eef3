"""`cxrbench phantom`: synthetic radiographs laid out like an official dataset release."""

from __future__ import annotations

import time
from pathlib import Path

import typer

_FORMATS = "nih, chexpert, mimic, padchest, vindr, csv"
_EPILOG = (
    "Format options (--option KEY=VALUE, repeatable): "
    "nih: layout=kaggle|flat, header=v2020|2017, bbox=true|false, rgba_rate=F; "
    "chexpert: uncertain_rate=F, test_set=true|false, prefix=NAME; "
    "mimic: uncertain_rate=F, missing_view_rate=F; "
    "padchest: bits=0|10|12; "
    "vindr: kaggle=true|false, disagreement=F, monochrome1_rate=F. "
    "Findings for --prevalence: cardiomegaly, pleural_effusion, pneumothorax, nodule, mass, consolidation, "
    "pneumonia, atelectasis, edema, scoliosis (csv: no pneumothorax, nodule, mass, consolidation). "
    "See docs/phantom.md for layouts, label conventions and the truth columns."
)


def _parse_options(items: list[str]) -> dict[str, str]:
    from cxrbench.common.errors import InputError

    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise InputError(
                f"{item!r} is not KEY=VALUE", where="--option", fix="write e.g. --option layout=flat"
            )
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def register(app: typer.Typer) -> None:
    """Add ``phantom`` to ``app``."""

    @app.command("phantom", epilog=_EPILOG)
    def phantom(
        out: Path = typer.Argument(..., help="Output directory (created; must be empty unless --overwrite)."),
        fmt: str = typer.Option(..., "--format", "-f", help=f"Dataset layout to imitate: {_FORMATS}."),
        patients: int = typer.Option(..., "--patients", "-n", help="Number of patients (>= 1)."),
        size: int = typer.Option(256, "--size", help="Image side in pixels (32-4096)."),
        site: str = typer.Option("A", "--site", help="Site style: A, B, C, or any name (hashed to a style)."),
        seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
        prevalence: str = typer.Option(
            None, "--prevalence", help="Per-finding prevalence per study, e.g. cardiomegaly=0.3,edema=0.1."
        ),
        views: str = typer.Option(None, "--views", help="View shares, e.g. PA=0.6,AP=0.25,LATERAL=0.15."),
        images_per_patient: float = typer.Option(
            None, "--images-per-patient", help="Mean images per patient (format default if omitted)."
        ),
        mild_rate: float = typer.Option(
            None, "--mild-rate", help="Chance per finding of a faint grade 1-2 finding labelled negative."
        ),
        val_fraction: float = typer.Option(
            None, "--val-fraction", help="Share of patients in the validation split."
        ),
        test_fraction: float = typer.Option(
            None, "--test-fraction", help="Share of patients in the test split."
        ),
        option: list[str] = typer.Option([], "--option", "-o", help="Format option KEY=VALUE (repeatable)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous phantom in OUT."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        """Write synthetic chest radiographs with findings, laid out exactly like a public dataset.

        Images, official-format CSVs and folders go under OUT; the ground truth (a cxrbench index)
        goes to OUT/_phantom/truth.parquet.
        """
        from cxrbench.phantom import generate

        options: dict[str, object] = _parse_options(option)
        for key, value in (
            ("prevalence", prevalence),
            ("views", views),
            ("images_per_patient", images_per_patient),
            ("mild_rate", mild_rate),
            ("val_fraction", val_fraction),
            ("test_fraction", test_fraction),
        ):
            if value is not None:
                options[key] = value
        t0 = time.perf_counter()
        truth = generate(
            out, fmt, patients, size=size, site=site, seed=seed, overwrite=overwrite, quiet=quiet, **options
        )
        seconds = time.perf_counter() - t0
        typer.echo(
            f"wrote {len(truth):,} images of {truth['patient_id'].nunique():,} patients "
            f"({fmt}, {size} px, site {site}, seed {seed}) to {out} in {seconds:.1f} s; "
            f"truth: {Path(out) / '_phantom' / 'truth.parquet'}"
        )
