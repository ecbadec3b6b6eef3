"""`cxrbench train`: fine-tune, linear-probe, LoRA-adapt or kNN-fit a backbone on a cache; resumes runs."""

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

Adaptation (--adaptation): full (default; with --linear-probe only the head trains, through the
frozen backbone), lora (low-rank adapters on the attention and MLP projections plus the head,
merged into best.safetensors; pip install 'cxrbench[lora]'), linear (a linear head on the frozen
backbone's embeddings, computed once and cached in CACHE/embeddings/; no augmentation), knn (cosine
kNN over those embeddings, --knn-k and --knn-temperature chosen on val). linear and knn also suit
backbones too large to fine-tune (dinov3-vit7b16).

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
        adaptation: str = typer.Option(None, "--adaptation", help="full, linear (head on cached embeddings), "
                                       "lora or knn (default: full)."),
        lora_rank: int = typer.Option(None, "--lora-rank", help="LoRA rank r (default: 8)."),
        lora_alpha: float = typer.Option(None, "--lora-alpha",
                                         help="LoRA alpha; updates scaled by alpha/r (default: 16)."),
        lora_dropout: float = typer.Option(None, "--lora-dropout",
                                           help="Dropout on the LoRA branch (default: 0)."),
        lora_targets: str = typer.Option(None, "--lora-targets", help="Comma-separated module names to adapt "
                                         "(default: ViT qkv,proj,fc1,fc2 (+ SwiGLU/Eva names); ConvNeXt "
                                         "fc1,fc2)."),
        knn_k: str = typer.Option(None, "--knn-k", help="Comma-separated neighbour counts, the best on val "
                                  "is used (default: 10,20,50,100)."),
        knn_temperature: str = typer.Option(None, "--knn-temperature", help="Comma-separated vote "
                                            "temperatures; the best on val is used (default: "
                                            "0.02,0.07,0.2)."),
        embed_batch_size: int = typer.Option(None, "--embed-batch-size", help="linear/knn: first batch of "
                                             "the embedding pass, halved on out-of-memory (default: 256 on "
                                             "CUDA, 64 on CPU)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Delete RUN's previous training outputs and start over."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    ) -> None:
        from cxrbench.common.errors import InputError
        from cxrbench.train.config import TrainConfig

        if out is None:
            raise InputError("--out is required", where="cxrbench train",
                             fix="give the run folder with --out RUN")
        method = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      lora_targets=lora_targets, knn_k=knn_k, knn_temperature=knn_temperature)
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
            tracker=tracker, tracker_project=tracker_project, tracker_name=tracker_name,
            adaptation=adaptation, embed_batch_size=embed_batch_size, **method),
            config_file=config, overwrite=overwrite, where="cxrbench train")
        unused = cfg.unused_options(k for k, v in method.items() if v is not None)
        if unused:
            flags = ", ".join("--" + k.replace("_", "-") for k in unused)
            raise InputError(f"{flags} belong(s) to another adaptation than this run's {cfg.adaptation!r}",
                             where="cxrbench train",
                             fix=f"leave {flags} out, or pass the --adaptation they belong to")

        from cxrbench.common.layout import RUN_BEST_WEIGHTS
        from cxrbench.train.loop import train

        result = train(cfg, overwrite=overwrite, quiet=quiet)
        if not quiet and result.best_epoch > 0:
            typer.echo(f"best val mean AUROC {result.best_metric:.4f} at epoch {result.best_epoch} "
                       f"({result.epochs_done} epochs, {result.steps} steps"
                       f"{', stopped early' if result.stopped_early else ''}); weights: "
                       f"{Path(cfg.out) / RUN_BEST_WEIGHTS}", err=True)
