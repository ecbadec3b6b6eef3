"""`cxrbench pretrain`: continued self-supervised pretraining (DINOv2 recipe) on unlabeled radiographs."""

from __future__ import annotations

from pathlib import Path

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


def _pair(text: str | None, option: str) -> tuple[float, float] | None:
    from cxrbench.common.errors import InputError

    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{text!r} is not MIN,MAX", where=option, fix=f"e.g. {option} 0.4,1.0") from None
    return lo, hi


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("pretrain", help=HELP, no_args_is_help=True)
    def pretrain_command(
        out: Path = typer.Option(
            None, "--out", "-o", show_default=False, help="Run folder to create or resume."
        ),
        cache: list[Path] = typer.Option(
            None, "--cache", help="A prepared cache; repeat for several. Only its train split is used."
        ),
        exclude: list[Path] = typer.Option(
            None,
            "--exclude",
            help="An index or cache whose val/test patients are left out too; repeat for several.",
        ),
        unlabeled: list[Path] = typer.Option(
            None,
            "--unlabeled",
            help="A cache used whole, every split: data you never evaluate on (e.g. a source site's "
            "archive); repeat for several.",
        ),
        init: str = typer.Option(
            None,
            "--init",
            help="Initialization: dinov2-vitb14, dinov3-vitb16, "
            "random-<arch>, checkpoint:PATH (`cxrbench weights list`).",
        ),
        config: Path = typer.Option(
            None,
            "--config",
            help="YAML with pretrain options (a run's config.yaml works); command-line options override it.",
        ),
        epochs: int = typer.Option(None, "--epochs", help="Epochs (default: 100)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Global images per step (default: 64)."),
        grad_accum: int = typer.Option(None, "--grad-accum", help="Micro-steps per step (default: 1)."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (default: 2e-4)."),
        min_lr: float = typer.Option(None, "--min-lr", help="Cosine floor (default: 1e-6)."),
        warmup_epochs: float = typer.Option(None, "--warmup-epochs", help="Linear lr warmup (default: 10)."),
        weight_decay: float = typer.Option(
            None, "--weight-decay", help="Start of the cosine weight decay (default: 0.04)."
        ),
        weight_decay_end: float = typer.Option(None, "--weight-decay-end", help="Its end (default: 0.2)."),
        layer_decay: float = typer.Option(None, "--layer-decay", help="Layer-wise lr decay (default: 0.9)."),
        clip_grad: float = typer.Option(None, "--clip-grad", help="Max grad norm (default: 3.0)."),
        drop_path: float = typer.Option(None, "--drop-path", help="Student stochastic depth (default: 0.1)."),
        precision: str = typer.Option(
            None, "--precision", help="auto, fp32, bf16 (default: auto = bf16 on CUDA)."
        ),
        momentum: float = typer.Option(
            None, "--momentum", help="Teacher EMA momentum at the start, to 1.0 (default: 0.992)."
        ),
        teacher_temp: float = typer.Option(
            None, "--teacher-temp", help="Teacher temperature after warmup (default: 0.07)."
        ),
        centering: str = typer.Option(
            None, "--centering", help="center (DINO) or sinkhorn (DINOv2's Sinkhorn-Knopp) (default: center)."
        ),
        out_dim: int = typer.Option(None, "--out-dim", help="Prototypes of the DINO head (default: 65536)."),
        ibot: bool = typer.Option(
            None, "--ibot/--no-ibot", help="iBOT masked-patch loss, ViTs only (default: on)."
        ),
        koleo_weight: float = typer.Option(
            None, "--koleo-weight", help="KoLeo weight; 0 = off (default: 0.1)."
        ),
        global_size: int = typer.Option(
            None, "--global-size", help="Global view side, px (default: the cache's size)."
        ),
        local_size: int = typer.Option(
            None, "--local-size", help="Local view side, px (default: 7/16 of the global size)."
        ),
        local_crops: int = typer.Option(None, "--local-crops", help="Local views per image (default: 8)."),
        global_scale: str = typer.Option(
            None, "--global-scale", help="MIN,MAX area of global crops (default: 0.4,1.0)."
        ),
        local_scale: str = typer.Option(
            None, "--local-scale", help="MIN,MAX area of local crops (default: 0.1,0.4)."
        ),
        seed: int = typer.Option(None, "--seed", help="Seed of heads, shuffling, views, masks (default: 0)."),
        workers: int = typer.Option(None, "--workers", help="Data loader processes (default: min(8, CPUs))."),
        device: str = typer.Option(
            None, "--device", help="cpu, cuda or cuda:N (default: cuda if available)."
        ),
        log_every: int = typer.Option(None, "--log-every", help="Steps per log line (default: 10)."),
        checkpoint_every: int = typer.Option(
            None,
            "--checkpoint-every",
            help="Also save last.pt every N steps (default: 0 = at epoch ends only).",
        ),
        deterministic: bool = typer.Option(None, "--deterministic", help="Deterministic algorithms."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Delete RUN's previous outputs and start over."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        from cxrbench.common.errors import InputError
        from cxrbench.pretrain.config import PretrainConfig

        if out is None:
            raise InputError(
                "--out is required", where="cxrbench pretrain", fix="give the run folder with --out RUN"
            )
        cfg = PretrainConfig.for_run(
            out,
            dict(
                caches=tuple(str(c) for c in cache) if cache else None,
                exclude=tuple(str(e) for e in exclude) if exclude else None,
                unlabeled=tuple(str(u) for u in unlabeled) if unlabeled else None,
                init=init,
                epochs=epochs,
                batch_size=batch_size,
                grad_accum=grad_accum,
                lr=lr,
                min_lr=min_lr,
                warmup_epochs=warmup_epochs,
                weight_decay=weight_decay,
                weight_decay_end=weight_decay_end,
                layer_decay=layer_decay,
                clip_grad=clip_grad,
                drop_path=drop_path,
                precision=precision,
                momentum=momentum,
                teacher_temp=teacher_temp,
                centering=centering,
                out_dim=out_dim,
                ibot=ibot,
                koleo_weight=koleo_weight,
                global_size=global_size,
                local_size=local_size,
                local_crops=local_crops,
                global_scale=_pair(global_scale, "--global-scale"),
                local_scale=_pair(local_scale, "--local-scale"),
                seed=seed,
                workers=workers,
                device=device,
                log_every=log_every,
                checkpoint_every=checkpoint_every,
                deterministic=deterministic,
            ),
            config_file=config,
            overwrite=overwrite,
            where="cxrbench pretrain",
        )

        from cxrbench.pretrain.loop import pretrain

        result = pretrain(cfg, overwrite=overwrite, quiet=quiet)
        if not quiet:
            typer.echo(
                f"pretrained {result.epochs_done} epochs ({result.steps} steps) on {result.images:,} "
                f"images, final loss {result.final_loss:.4f}; fine-tune with --init {result.init}",
                err=True,
            )
