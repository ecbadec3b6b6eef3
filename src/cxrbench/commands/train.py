"""`cxrbench train`: fine-tune (or linear-probe) a backbone on a cache; resumes an existing run."""

from __future__ import annotations

from pathlib import Path

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

Experiment trackers: --tracker mlflow (where MLFLOW_TRACKING_URI points) or --tracker wandb (your W&B
login; WANDB_MODE=offline keeps it in RUN/wandb/) logs the config, every TensorBoard scalar and the
final figures with the SHA-256 of best.safetensors, beside log.jsonl and TensorBoard.

Examples:

  cxrbench train --cache cache/nih --init dinov2-vitb14 --out runs/nih-dinov2

  cxrbench train --cache cache/nih --init imagenet21k-vitb16 --out runs/nih-in21k --lr 3e-5
  --schedule cosine --warmup-epochs 1 --layer-decay 0.75 --epochs 30

  cxrbench train --cache cache/vindr --init checkpoint:runs/mimic/best.safetensors --keep-shared-head
  --out runs/vindr-mimic
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("train", help=HELP, no_args_is_help=True)
    def train_command(
        out: Path = typer.Option(None, "--out", "-o", show_default=False,
                                 help="Run folder to create or resume."),
        cache: Path = typer.Option(None, "--cache", help="Prepared cache directory (`cxrbench prepare`)."),
        init: str = typer.Option(None, "--init", help="Initialization: dinov2-vitb14, imagenet21k-vitb16, "
                                 "random-<arch>, timm:<name>, checkpoint:PATH (`cxrbench weights list`)."),
        config: Path = typer.Option(None, "--config", help="YAML with train options (a run's config.yaml "
                                    "works); command-line options override it."),
        findings: str = typer.Option(None, "--findings",
                                     help="Comma-separated subset of the cache's findings (default: all)."),
        image_size: int = typer.Option(None, "--image-size",
                                       help="Model input side in px (default: the cache's size)."),
        epochs: int = typer.Option(None, "--epochs", help="Maximum epochs (default: 100)."),
        batch_size: int = typer.Option(None, "--batch-size",
                                       help="Global images per optimizer step (default: 30)."),
        grad_accum: int = typer.Option(None, "--grad-accum",
                                       help="Micro-steps per optimizer step (default: 1)."),
        lr: float = typer.Option(None, "--lr", help="Peak learning rate (default: 1e-5)."),
        min_lr: float = typer.Option(None, "--min-lr", help="Cosine floor (default: 0)."),
        weight_decay: float = typer.Option(None, "--weight-decay",
                                           help="AdamW weight decay, not on biases/norms (default: 0)."),
        schedule: str = typer.Option(None, "--schedule", help="constant or cosine (default: constant)."),
        warmup_epochs: float = typer.Option(None, "--warmup-epochs",
                                            help="Linear warmup, epochs (default: 0)."),
        layer_decay: float = typer.Option(None, "--layer-decay",
                                          help="Layer-wise lr decay factor, e.g. 0.75 (default: off)."),
        linear_probe: bool = typer.Option(None, "--linear-probe/--full-finetune",
                                          help="Train the head only, backbone frozen (default: full)."),
        precision: str = typer.Option(None, "--precision",
                                      help="auto, fp32, bf16, fp16 (default: auto = bf16 on CUDA, fp32 on "
                                           "CPU)."),
        clip_grad: float = typer.Option(None, "--clip-grad",
                                        help="Clip the global grad norm (default: off)."),
        compile_: bool = typer.Option(None, "--compile/--no-compile",
                                      help="torch.compile the model (default: off)."),
        pos_weight: bool = typer.Option(None, "--pos-weight/--no-pos-weight",
                                        help="BCE pos_weight = negatives/positives per finding "
                                             "(default: on)."),
        augment: bool = typer.Option(None, "--augment/--no-augment",
                                     help="Training augmentation (default: on)."),
        hflip: float = typer.Option(None, "--hflip", help="Horizontal flip probability (default: 0.5)."),
        rotate: float = typer.Option(None, "--rotate", help="Max rotation in degrees (default: 7)."),
        patience: int = typer.Option(None, "--patience",
                                     help="Stop after N epochs without val improvement; 0 = never "
                                          "(default: 10)."),
        seed: int = typer.Option(None, "--seed",
                                 help="Seed of head init, shuffling, augmentation (default: 0)."),
        keep_shared_head: bool = typer.Option(None, "--keep-shared-head",
                                              help="checkpoint: inits: keep head rows of shared findings."),
        allow_overlap: bool = typer.Option(None, "--allow-overlap", help="checkpoint: inits: accept patients "
                                           "shared with the checkpoint's training cache."),
        label_fraction: float = typer.Option(None, "--label-fraction", help="Train on this share of the "
                                             "training patients (nested, stratified by finding), or on "
                                             "this many patients when above 1 (default: 1 = all)."),
        label_noise: float = typer.Option(None, "--label-noise", help="Flip this share of the known "
                                          "training labels of each finding (default: 0)."),
        label_seed: int = typer.Option(None, "--label-seed",
                                       help="Seed of the label budget and label noise (default: 0)."),
        workers: int = typer.Option(None, "--workers", help="Data loader processes (default: min(8, CPUs))."),
        device: str = typer.Option(None, "--device",
                                   help="cpu, cuda or cuda:N (default: cuda if available)."),
        log_every: int = typer.Option(None, "--log-every",
                                      help="Optimizer steps per log line (default: 10)."),
        checkpoint_every: int = typer.Option(None, "--checkpoint-every", help="Also save last.pt every N "
                                             "optimizer steps (default: 0 = at epoch ends only)."),
        deterministic: bool = typer.Option(None, "--deterministic",
                                           help="Deterministic algorithms: bit-exact reruns, slower on GPU."),
        tracker: str = typer.Option(None, "--tracker", help="Also log to an experiment tracker: mlflow "
                                    "(MLFLOW_TRACKING_URI) or wandb (pip install 'cxrbench[mlflow]' / "
                                    "'[wandb]')."),
        tracker_project: str = typer.Option(None, "--tracker-project",
                                            help="MLflow experiment / W&B project (default: cxrbench)."),
        tracker_name: str = typer.Option(None, "--tracker-name",
                                         help="The run's name in the tracker (default: the run folder)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Delete RUN's previous training outputs and start over."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        from cxrbench.common.errors import InputError
        from cxrbench.train.config import TrainConfig

        if out is None:
            raise InputError("--out is required", where="cxrbench train",
                             fix="give the run folder with --out RUN")
        cfg = TrainConfig.for_run(out, dict(
            cache=None if cache is None else str(cache), init=init, findings=findings,
            image_size=image_size, epochs=epochs, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
            min_lr=min_lr, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
            layer_decay=layer_decay,
            linear_probe=linear_probe, precision=precision, clip_grad=clip_grad, compile=compile_,
            pos_weight=pos_weight, augment=augment, hflip=hflip, rotate=rotate, patience=patience, seed=seed,
            keep_shared_head=keep_shared_head, allow_overlap=allow_overlap, label_fraction=label_fraction,
            label_noise=label_noise, label_seed=label_seed, workers=workers, device=device,
            log_every=log_every, checkpoint_every=checkpoint_every, deterministic=deterministic,
            tracker=tracker, tracker_project=tracker_project, tracker_name=tracker_name),
            config_file=config, overwrite=overwrite, where="cxrbench train")

        from cxrbench.common.layout import RUN_BEST_WEIGHTS
        from cxrbench.train.loop import train

        result = train(cfg, overwrite=overwrite, quiet=quiet)
        if not quiet and result.best_epoch > 0:
            typer.echo(f"best val mean AUROC {result.best_metric:.4f} at epoch {result.best_epoch} "
                       f"({result.epochs_done} epochs, {result.steps} steps"
                       f"{', stopped early' if result.stopped_early else ''}); weights: "
                       f"{Path(cfg.out) / RUN_BEST_WEIGHTS}", err=True)
