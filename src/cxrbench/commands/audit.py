"""`cxrbench audit`: was an initialization pretrained on the images it is tested on?"""

from __future__ import annotations

import json
from pathlib import Path

import typer

HELP = """Check an initialization's pretraining data against an index (or cache).

Prints the datasets the init was pretrained on (its registry entry, or the best.json of a
checkpoint) and warns when the index's dataset is among them. With --pretraining-list (e.g.
RAD-DINO's training_images.csv from its hub repository; a `cxrbench pretrain` run's own
pretrain_images.parquet is used by default) it counts the images and patients of each --split found
in that list (matched by image id / the last path components, extension ignored).
With --run it also evaluates that run's predictions of the split with and without the images found,
side by side. --out writes the images found (CSV).

Examples:

  cxrbench audit --init rad-dino --index nih.parquet

  cxrbench audit --init rad-dino --index cache/mimic --pretraining-list training_images.csv
  --run runs/mimic-raddino --out contaminated.csv
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("audit", help=HELP, no_args_is_help=True)
    def audit_command(
        init: str = typer.Option(
            ..., "--init", help="The initialization (registry name or checkpoint:PATH)."
        ),
        index: Path = typer.Option(..., "--index", help="An index .parquet (`cxrbench index`) or a cache."),
        pretraining_list: Path = typer.Option(
            None,
            "--pretraining-list",
            help="CSV/TSV/TXT/Parquet listing the images the init was pretrained on.",
        ),
        split: list[str] = typer.Option(None, "--split", help="Split(s) to audit (default: test)."),
        run: Path = typer.Option(
            None,
            "--run",
            help="A run evaluated on the split: its metric with and "
            "without the images found (needs --pretraining-list).",
        ),
        bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Resamples for the side-by-side CIs."),
        cluster: str = typer.Option("patient", "--cluster", help="Bootstrap unit: image or patient."),
        out: Path = typer.Option(
            None, "--out", help="Write the images found (CSV: split, dataset, image_id, patient_id)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        from cxrbench.common.errors import InputError
        from cxrbench.common.fileio import atomic_write_text, json_safe
        from cxrbench.common.layout import CACHE_INDEX, predictions_path
        from cxrbench.evaluate.contamination import (
            audit_index,
            evaluate_excluding,
            read_pretraining_list,
            run_pretraining_list,
            side_by_side,
        )
        from cxrbench.index.schema import read_index

        splits = list(split) if split else ["test"]
        if pretraining_list is None:  # a `cxrbench pretrain` run lists the images it used
            pretraining_list = run_pretraining_list(init)
        df, _ = read_index(index / CACHE_INDEX if index.is_dir() else index)
        plist = read_pretraining_list(pretraining_list) if pretraining_list is not None else None
        result = audit_index(init, df, plist, splits)
        doc = result.to_dict()
        table = None
        if run is not None:
            if plist is None:
                raise InputError(
                    "--run needs --pretraining-list (which images to exclude)",
                    where="--run",
                    fix="give the init's list of pretraining images",
                )
            from cxrbench.evaluate.predictions import read_predictions

            test = read_predictions(predictions_path(run, splits[0]))
            val_path = predictions_path(run, "val")
            val = read_predictions(val_path) if val_path.is_file() else None
            both = evaluate_excluding(
                test,
                result.found_ids.get(splits[0], []),
                val,
                n_resamples=bootstrap,
                cluster=cluster,
                threshold_from="val" if val is not None else "test",
            )
            table = side_by_side(both)
            doc["run"] = {
                "path": str(run),
                "split": splits[0],
                "excluded_images": both["excluded_images"],
                "excluded_patients": both["excluded_patients"],
                "remaining_images": both["remaining_images"],
                "auroc": table.to_dict("records"),
            }
        if out is not None:
            lines = ["split,dataset,image_id,patient_id"]
            by_id = df.set_index(df["image_id"].astype(str))
            for s, ids in result.found_ids.items():
                for i in ids:
                    row = by_id.loc[i]
                    row = row.iloc[0] if row.ndim > 1 else row
                    lines.append(f"{s},{row['dataset']},{i},{row['patient_id']}")
            atomic_write_text(out, "\n".join(lines) + "\n")
        if as_json:
            typer.echo(json.dumps(json_safe(doc), indent=2))
            return
        typer.echo(f"init {init}: pretrained on {', '.join(result.pretrained_on) or 'nothing known'}")
        typer.echo(f"index {index}: dataset {', '.join(result.index_datasets)}")
        for w in result.warnings:
            typer.echo(f"warning: {w}", err=True)
        if plist is None:
            typer.echo(
                "no --pretraining-list: which images were seen is unknown; every image of a dataset the "
                "init was pretrained on may have been"
            )
        else:
            shown = ", ".join(result.list_datasets) or "not named"
            typer.echo(
                f"pretraining list {pretraining_list}: {result.list_rows:,} images (datasets: {shown})"
            )
        typer.echo("split  images  patients  found images  found patients")
        for s, e in result.splits.items():
            if e["found_images"] is None:
                typer.echo(f"{s:<6} {e['images']:>6,}  {e['patients']:>8,}  {'-':>12}  {'-':>14}")
            else:
                fi = f"{e['found_images']:,} ({e['found_images'] / max(e['images'], 1):.1%})"
                fp = f"{e['found_patients']:,} ({e['found_patients'] / max(e['patients'], 1):.1%})"
                typer.echo(f"{s:<6} {e['images']:>6,}  {e['patients']:>8,}  {fi:>12}  {fp:>14}")
        if table is not None:
            typer.echo(
                f"\n{run}: AUROC on {splits[0]}, all images vs without the {doc['run']['excluded_images']:,} "
                "found in the pretraining list"
            )
            typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if out is not None:
            typer.echo(f"images found: {out}")
