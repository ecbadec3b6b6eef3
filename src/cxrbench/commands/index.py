"""`cxrbench index`: official metadata -> the normalized index (Contract 2). Never opens an image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

_HELP = (
    "Read a dataset's official label files into a normalized index (one row per image).\n\n"
    "Reads metadata only: images are never opened (folders are listed to find the NIH, PadChest and "
    "VinDr layouts; --check-files stats every image). Writes FILE.parquet and FILE.report.json "
    "(dropped rows by reason, unknown terms, policies, split method). Details per dataset: "
    "docs/datasets.md.\n\n"
    "Examples:\n\n"
    "cxrbench index --dataset nih --root /data/nih --out nih.parquet --labels study-cxr14\n\n"
    "cxrbench index --dataset chexpert --root /data --out chexpert.parquet --uncertain ignore\n\n"
    "cxrbench index --dataset csv --root /data/uka --mapping configs/uka-cxr.yaml --out uka.parquet"
)


def register(app: typer.Typer) -> None:
    """Add `index` to the app."""

    @app.command("index", help=_HELP)
    def index(
        dataset: str = typer.Option(
            ..., "--dataset", "-d", help="nih, chexpert, mimic, padchest, vindr, vindr-pcxr, rsna, siim, "
            "nih-google or csv (with --mapping)."
        ),
        root: Path = typer.Option(
            ..., "--root", help="The dataset folder, as released (paths are relative to it)."
        ),
        out: Path = typer.Option(
            ..., "--out", "-o", help="The index to write (.parquet); the report goes beside it."
        ),
        labels: str = typer.Option(
            "all",
            "--labels",
            help="A preset (study-vindr, study-cxr14, study-chexpert, "
            "study-padchest, study-vindr-pcxr, study-mimic, study-vindr-mimic, study-cxr14-mimic, "
            "study-padchest-mimic, rsna, siim, nih-google, all) or a comma-separated list of findings "
            "and presets "
            "(e.g. study-mimic,edema).",
        ),
        uncertain: str = typer.Option(
            "zeros",
            "--uncertain",
            help="Uncertain (-1) labels of CheXpert/MIMIC/csv: "
            "zeros (the study's choice), ones, or ignore (unknown, masked).",
        ),
        blank: str = typer.Option(
            "zeros",
            "--blank",
            help="Blank (not mentioned) CheXpert/MIMIC labels: zeros "
            "(negative, the study's choice) or ignore (unknown, masked).",
        ),
        views: str = typer.Option(
            "frontal",
            "--views",
            help="frontal (PA, AP, AP_SUPINE and source-frontal "
            "images of unknown projection), all, or a list such as PA,AP.",
        ),
        split_mode: str = typer.Option(
            "official",
            "--splits",
            help="official (the release's split; a missing val/test carved by patient from train), "
            "stratified (every finding's positives balanced across splits, by patient) or hash "
            "(a patient hash split).",
        ),
        carve: str = typer.Option(
            "stratified", "--carve",
            help="How splits the release lacks are made: stratified or hash.",
        ),
        split_seed: int = typer.Option(
            0, "--split-seed", help="Seed of every split that is made (hash, stratified, carved)."
        ),
        split_fractions: str = typer.Option(
            "0.7,0.1,0.2",
            "--split-fractions",
            help="TRAIN,VAL,TEST shares of the hash split and of splits carved from an official train "
            "split (the study's custom split was 80/20 train/test: 0.8,0,0.2).",
        ),
        readers: str = typer.Option(
            "majority", "--readers", help="VinDr train readers: majority (2 of 3) or any."
        ),
        labeler: str = typer.Option("chexpert", "--labeler", help="MIMIC label file: chexpert or negbio."),
        radiologist_test: bool = typer.Option(
            False,
            "--radiologist-test",
            help="MIMIC: test split labels from mimic-cxr-2.1.0-test-set-"
            "labeled.csv (only the studies it covers).",
        ),
        labels_file: Path | None = typer.Option(
            None,
            "--labels-file",
            help="The label CSV (plain or .gz) when it is not at its official place under --root.",
        ),
        mapping: Path | None = typer.Option(
            None, "--mapping", help="YAML mapping of a csv dataset (see configs/uka-cxr.yaml)."
        ),
        demographics: Path | None = typer.Option(
            None, "--demographics",
            help="CheXpert: the released demographics table (CHEXPERT DEMO.xlsx or a CSV export) when it "
            "is not in --root; adds race and ethnicity (and insurance where released) as subgroup columns.",
        ),
        check_files: bool = typer.Option(
            False, "--check-files", help="Every image must exist (a missing one is an error)."
        ),
        drop_missing: bool = typer.Option(
            False,
            "--drop-missing",
            help="Drop rows whose image is missing (counted in the report). Without it a fast check still "
            "counts missing images and warns.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    ) -> None:
        import warnings

        from cxrbench.common.errors import CxrbenchWarning
        from cxrbench.common.layout import index_report_path
        from cxrbench.index.build import build_index
        from cxrbench.index.sources.base import IndexOptions

        options = IndexOptions.from_dict(dict(
            labels=labels, uncertain=uncertain, blank=blank, views=views, split_mode=split_mode,
            split_seed=split_seed, split_fractions=split_fractions, carve=carve, readers=readers,
            labeler=labeler,
            radiologist_test=radiologist_test, labels_file=labels_file, mapping=mapping,
            demographics=demographics,
            check_files=check_files, drop_missing=drop_missing), where="cxrbench index")
        with warnings.catch_warnings():  # printed below, one `warning:` line each
            warnings.simplefilter("ignore", CxrbenchWarning)
            df, findings, report = build_index(dataset, root, out=out, options=options, quiet=quiet)
        for warning in report.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        if not quiet:
            typer.echo(f"wrote {out}: {summary_line(df, findings, report)}; report {index_report_path(out)}")


def summary_line(df: Any, findings: list[str], report: dict) -> str:
    """``N images of P patients (train N images / P patients; ...), K findings; split METHOD``."""
    counts = df["split"].value_counts()
    pats = df.groupby("split")["patient_id"].nunique()
    parts = "; ".join(f"{s} {int(counts.get(s, 0)):,} images / {int(pats.get(s, 0)):,} patients"
                      for s in ("train", "val", "test"))
    return (f"{len(df):,} images of {df['patient_id'].nunique():,} patients ({parts}), {len(findings)} "
            f"findings; split {report['split']['method']}")
