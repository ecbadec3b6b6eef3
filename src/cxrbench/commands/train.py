"""`cxrbench train`: fine-tune, linear-probe, LoRA-adapt or kNN-fit a backbone on a cache; resumes runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

HELP = """Fine-tune a backbone on a prepared cache and write the run folder RUN (--out).

Trains on the cache's train split, scores the val split after every epoch (mean AUROC over the
findings), keeps the best epoch in RUN/best.safetensors + best.json and stops early after
--patience epochs without improvement. The test split is never read.

Defaults are the reference study's: AdamW, lr 1e-5, weight decay 0, batch 30, 100 epochs, flip +
rotation 7 degrees, BCE with per-finding positive weights. --batch-size is the global batch (all
processes and accumulation micro-steps together), so results do not depend on the GPU count.

Resume: running train again on an existing RUN continues from RUN/checkpoints/last.pt (exactly:
same batches, augmentations and updates). Options you leave out are taken from RUN/config.yaml;
options you give must match it (else --overwrite restarts the run). `cxrbench train --out RUN`
alone resumes.

Many GPUs: torchrun --nproc_per_node=N -m cxrbench train ... (DDP; NCCL on GPU, gloo on CPU).

{methods}

Experiment trackers: --tracker mlflow (where MLFLOW_TRACKING_URI points) or --tracker wandb (your W&B
login; WANDB_MODE=offline keeps it in RUN/wandb/) logs the config, every TensorBoard scalar and the
final figures with the SHA-256 of best.safetensors, beside log.jsonl and TensorBoard.

Examples:

  cxrbench train --cache cache/nih --init dinov2-vitb14 --out runs/nih-dinov2

  cxrbench train --cache cache/nih --init imagenet21k-vitb16 --out runs/nih-in21k --lr 3e-5
  --schedule cosine --warmup-epochs 1 --layer-decay 0.75 --epochs 30

  cxrbench train --cache cache/vindr --init checkpoint:runs/mimic/best.safetensors --keep-shared-head
  --out runs/vindr-mimic

  cxrbench train --cache cache/nih --init dinov2-vitb14 --out runs/nih-lora --adaptation lora
  --lora-rank 16 --lora-alpha 16 --lr 1e-4

  cxrbench train --cache cache/nih --init dinov3-vit7b16 --out runs/nih-7b-knn --adaptation knn
  --knn-k 10,20,50 --knn-temperature 0.07
"""


# spellings other than --field-name (the rest is generated from TrainConfig's fields)
FLAGS: dict[str, tuple[str, ...]] = {
    "out": ("--out", "-o"),
    "linear_probe": ("--linear-probe/--full-finetune",),
    "keep_shared_head": ("--keep-shared-head",),
    "allow_overlap": ("--allow-overlap",),
    "deterministic": ("--deterministic",),
}
CONFIG_ONLY = ("betas",)  # settable in a --config file, not on the command line
PATHS = ("out", "cache")


def options() -> list[inspect.Parameter]:
    """The command's options: one per TrainConfig field, the adaptation methods from their registry."""
    from cxrbench.commands._options import config_parameters
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.methods import METHODS, owned_options

    extra = {key: f"(--adaptation {method})" for key, method in owned_options().items()}
    extra["adaptation"] = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + "."
    order = dict.fromkeys(["out", "cache", "init", *TrainConfig.ordered_fields()])
    return config_parameters(TrainConfig, order=order, skip=CONFIG_ONLY, flags=FLAGS, paths=PATHS,
                             help_extra=extra)


def methods_help() -> str:
    """The help paragraph on the adaptation methods, from their registry."""
    from cxrbench.train.methods import METHODS

    methods = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    frozen = ", ".join(m.name for m in METHODS.values() if m.regime == "embeddings")
    return (f"Adaptation (--adaptation) -- {methods}. The methods on cached embeddings ({frozen}) also suit "
            "backbones too large to fine-tune (dinov3-vit7b16).")


def register(app: typer.Typer) -> None:
    """Add the command to app."""
    from cxrbench.commands._options import with_parameters

    def train_command(
        config: Path = typer.Option(None, "--config", help="YAML with train options (a run's config.yaml "
                                    "works); command-line options override it."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Delete RUN's previous training outputs and start over."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
        **values: Any,
    ) -> None:
        run_train(values, config=config, overwrite=overwrite, quiet=quiet)

    app.command("train", help=HELP.replace("{methods}", methods_help()), no_args_is_help=True)(
        with_parameters(train_command, options()))


def run_train(values: dict[str, Any], *, config: Path | None, overwrite: bool, quiet: bool) -> None:
    """Train (or resume) the run the command-line options describe."""
    from cxrbench.commands._options import option_values
    from cxrbench.common.errors import InputError
    from cxrbench.common.layout import RUN_BEST_WEIGHTS
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train
    from cxrbench.train.methods import owned_options

    given = option_values(values, TrainConfig.model_fields)
    out = given.pop("out", None)
    if out is None:
        raise InputError("--out is required", where="cxrbench train",
                         fix="give the run folder with --out RUN")
    cfg = TrainConfig.for_run(out, given, config_file=config, overwrite=overwrite, where="cxrbench train")
    unused = cfg.unused_options(k for k in given if k in owned_options())
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise InputError(f"{flags} belong(s) to another adaptation than this run's {cfg.adaptation!r}",
                         where="cxrbench train",
                         fix=f"leave {flags} out, or pass the --adaptation they belong to")
    result = train(cfg, overwrite=overwrite, quiet=quiet)
    if not quiet and result.best_epoch > 0:
        typer.echo(f"best val mean AUROC {result.best_metric:.4f} at epoch {result.best_epoch} "
                   f"({result.epochs_done} epochs, {result.steps} steps"
                   f"{', stopped early' if result.stopped_early else ''}); weights: "
                   f"{Path(cfg.out) / RUN_BEST_WEIGHTS}", err=True)
