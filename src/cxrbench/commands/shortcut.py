"""`cxrbench shortcut`: the metadata-only baseline (view, sex, age, site -> each finding)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrbench.commands._help import fold_paragraphs

HELP = """Fit a metadata-only model on the train split of a cache (or index) and score its other splits.

One logistic regression per finding on one-hot view, sex and dataset/site and on age (standardized,
with its square and a missing-age indicator), never a pixel. The result is a run-like folder, OUT/
shortcut.json plus OUT/eval/{val,test}/predictions.parquet (Contract 4), evaluated like a run
(metrics.json, and subgroups.json from the same metadata), so `cxrbench compare RUN OUT` works.

With --against RUN (repeatable) each image model is tested against it (paired bootstrap,
one-sided: model > shortcut, Benjamini-Hochberg over the findings), and a warning line names every
finding where a model does not beat the shortcut significantly: the model may read the acquisition
(AP vs PA, the site) rather than the finding.

Example:

  cxrbench shortcut cache/covid --out runs/covid-shortcut --against runs/covid-dinov2
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("shortcut", help=fold_paragraphs(HELP), no_args_is_help=True)
    def shortcut_cmd(
        source: Path = typer.Argument(..., help="Cache folder (from `cxrbench prepare`) or index .parquet."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder (new, empty, or a previous one)."),
        features: str | None = typer.Option(
            None, "--features",
            help="Metadata columns, comma-separated (default: those of view,sex,dataset,age present)."),
        findings: str | None = typer.Option(None, "--findings",
                                            help="Findings, comma-separated (default: all)."),
        against: list[Path] | None = typer.Option(
            None, "--against", help="Image-model run folder to test against the shortcut; repeatable."),
        n_bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
        cluster: str = typer.Option("image", "--cluster", help="Resampling unit: image or patient."),
        alpha: float = typer.Option(0.05, "--alpha", min=0.0001, max=0.5,
                                    help="Significance level of 'beats the shortcut'."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    ) -> None:
        import warnings

        from cxrbench.commands.evaluate import parse_list, print_metrics
        from cxrbench.evaluate.analysis import SubgroupOptions
        from cxrbench.evaluate.compare import load_run_predictions
        from cxrbench.evaluate.predictions import read_predictions
        from cxrbench.evaluate.run_eval import evaluate_run
        from cxrbench.evaluate.shortcut import shortcut_check, shortcut_warnings, write_shortcut

        paths = write_shortcut(source, out, findings=parse_list(findings, "--findings"),
                               features=parse_list(features, "--features"))
        if "test" not in paths:
            typer.echo(f"wrote {', '.join(map(str, paths.values()))} (no test split to evaluate)", err=True)
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_run(out, "test", n_resamples=n_bootstrap, seed=seed, cluster=cluster,
                                  subgroups=SubgroupOptions(metadata=str(source), required=False),
                                  threshold_from="val" if "val" in paths else "test")
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        if not quiet:
            print_metrics(result)
            typer.echo(f"wrote {out}")
        shortcut = read_predictions(paths["test"])
        for run in against or []:
            preds, _ = load_run_predictions([run], "test")
            (name, model), = preds.items()
            table = shortcut_check(model, shortcut, name=name, n_resamples=n_bootstrap, seed=seed,
                                   cluster=cluster, alpha=alpha)
            lines = shortcut_warnings(table)
            for line in lines:
                typer.echo(f"warning: {line}", err=True)
            if not quiet:
                beaten = int(table["beats_shortcut"].sum())
                typer.echo(f"{name}: beats the shortcut on {beaten} of {len(table)} rows (findings and mean)"
                           + ("" if lines else "; no warning"))
