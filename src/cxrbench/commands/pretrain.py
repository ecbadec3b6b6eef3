"""`cxrbench pretrain`: continued self-supervised pretraining (DINOv2 recipe) on unlabeled radiographs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

HELP = """Self-supervised pretraining of a backbone on the images of one or more caches (labels unused),
in the DINOv2 recipe: an EMA teacher distils into the student over 2 global and --local-crops local
views (DINO loss with centering or Sinkhorn-Knopp), plus iBOT's masked-patch loss and KoLeo.

Leakage-safe: only the train split of each --cache is read, minus every patient who is in a val or
test split of any --cache or --exclude index/cache (pass every dataset you will evaluate on). An
--unlabeled cache, data you never evaluate on, is read whole. The images used are listed in
RUN/pretrain_images.parquet with their hash.

Output: after every epoch the teacher backbone is written to RUN/best.safetensors + best.json, an
init for fine-tuning: cxrbench train --init checkpoint:RUN/best.safetensors ...

Resume: running pretrain again on an existing RUN continues exactly from RUN/checkpoints/last.pt;
options left out come from RUN/config.yaml. Many GPUs: torchrun --nproc_per_node=N -m cxrbench
pretrain ... (DDP).

Examples:

  cxrbench pretrain --cache cache/mimic --cache cache/chexpert --exclude nih.parquet
  --init dinov2-vitb14 --out runs/ssl-cxr --epochs 30 --global-size 224

  cxrbench pretrain --cache cache/nih --init random-vit-small --out runs/ssl-scratch --no-ibot
"""


# spellings other than --field-name, repeatable options (the rest is generated from PretrainConfig's fields)
FLAGS: dict[str, tuple[str, ...]] = {"out": ("--out", "-o"), "deterministic": ("--deterministic",)}
REPEATED = {"caches": "--cache", "exclude": "--exclude", "unlabeled": "--unlabeled"}
# the expert keys of the DINOv2 recipe: settable in a --config file, not on the command line
CONFIG_ONLY = ("betas", "freeze_last_layer_epochs", "momentum_end", "warmup_teacher_temp",
               "warmup_teacher_temp_epochs", "student_temp", "center_momentum", "sinkhorn_iterations",
               "head_hidden", "head_bottleneck", "head_layers", "dino_weight", "ibot_weight",
               "ibot_separate_head", "mask_probability", "mask_ratio", "hflip", "rotate", "brightness",
               "contrast", "blur", "blur_sigma")


def options() -> list[inspect.Parameter]:
    """The command's options: one per PretrainConfig field that is not config-file only."""
    from cxrbench.commands._options import config_parameters
    from cxrbench.pretrain.config import PretrainConfig

    order = dict.fromkeys(["out", "caches", "exclude", "unlabeled", "init", *PretrainConfig.model_fields])
    return config_parameters(PretrainConfig, order=order, skip=CONFIG_ONLY, flags=FLAGS, repeated=REPEATED,
                             paths=("out",))


def register(app: typer.Typer) -> None:
    """Add the command to app."""
    from cxrbench.commands._options import with_parameters

    def pretrain_command(
        config: Path = typer.Option(None, "--config", help="YAML with pretrain options (a run's config.yaml "
                                    "works); command-line options override it."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete RUN's previous outputs and start "
                                                                  "over."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
        **values: Any,
    ) -> None:
        run_pretrain(values, config=config, overwrite=overwrite, quiet=quiet)

    app.command("pretrain", help=HELP, no_args_is_help=True)(with_parameters(pretrain_command, options()))


def run_pretrain(values: dict[str, Any], *, config: Path | None, overwrite: bool, quiet: bool) -> None:
    """Pretrain (or resume) the run the command-line options describe."""
    from cxrbench.commands._options import option_values
    from cxrbench.common.errors import InputError
    from cxrbench.pretrain.config import PretrainConfig
    from cxrbench.pretrain.loop import pretrain

    given = option_values(values, PretrainConfig.model_fields)
    out = given.pop("out", None)
    if out is None:
        raise InputError("--out is required", where="cxrbench pretrain", fix="give the run folder with --out "
                                                                             "RUN")
    cfg = PretrainConfig.for_run(out, given, config_file=config, overwrite=overwrite, where="cxrbench "
                                                                                            "pretrain")
    result = pretrain(cfg, overwrite=overwrite, quiet=quiet)
    if not quiet:
        typer.echo(f"pretrained {result.epochs_done} epochs ({result.steps} steps) on {result.images:,} "
                   f"images, "
                   f"final loss {result.final_loss:.4f}; fine-tune with --init {result.init}", err=True)
