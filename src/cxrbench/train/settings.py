"""The training settings every adaptation method shares: one frozen, validated pydantic model.

Defaults follow the reference study (Tayebi Arasteh et al. 2024): AdamW, lr 1e-5, weight decay 0,
batch 30, up to 100 epochs, horizontal flip p=0.5 and rotation up to 7 degrees, BCE with per-finding
positive weights. The options a single method owns (LoRA's rank, kNN's k, ...) live in that
method's module (:mod:`cxrbench.train.methods`); :class:`cxrbench.train.config.TrainConfig` joins
them with these into the one config a run stores in ``config.yaml`` (section ``train``).

The field descriptions are the help texts of ``cxrbench train`` (its options are generated from them).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrbench.common.errors import InputError, spell
from cxrbench.common.runconfig import RunConfig, betas_option, device_option

DEFAULT_ADAPTATION = "full"


def comma_list(v: Any) -> Any:
    """A comma-separated string or a single number as a list (the CLI's and YAML's shorthand); an
    empty list or a repeated value is refused."""
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    elif isinstance(v, int | float) and not isinstance(v, bool):
        v = [v]
    if v is not None and len(v) == 0:
        raise ValueError("must list at least one value")
    if v is not None and len(set(v)) != len(v):
        raise ValueError("lists a value twice")
    return v


class MethodOptions(BaseModel):
    """Base of the options one adaptation method owns (flat ``config.yaml`` keys such as ``lora_rank``).

    The options models of all methods are joined into one config by multiple inheritance, so field and
    validator names carry the method's name (``lora_rank``, ``_split_lora_lists``): a name used twice
    would hide the other (tests/train/test_config.py checks)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class TrainSettings(RunConfig):
    """The settings of a training run that do not belong to one adaptation method.

    ``batch_size`` is the *global* batch: images per optimizer step over all processes and
    gradient-accumulation micro-steps, so results do not depend on the number of GPUs.
    """

    SECTION: ClassVar[str] = "train"

    # what to train on, from what, into where
    cache: str = Field(description="Prepared cache directory (`cxrbench prepare`).")
    init: str = Field(description="Initialization: dinov2-vitb14, imagenet21k-vitb16, random-<arch>, "
                      "timm:<name>, checkpoint:PATH (`cxrbench weights list`).")
    out: str = Field(description="Run folder to create or resume.")
    findings: tuple[str, ...] | None = Field(None, description="Comma-separated subset of the cache's "
                                             "findings (default: all).")
    image_size: int | None = Field(None, ge=16, le=4096, description="Model input side in px (default: "
                                   "the cache's size).")

    # optimization (study defaults)
    epochs: int = Field(100, ge=1, le=100_000, description="Maximum epochs.")
    batch_size: int = Field(30, ge=1, description="Global images per optimizer step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(1e-5, gt=0, le=10.0, description="Peak learning rate.")
    min_lr: float = Field(0.0, ge=0, description="Floor of the cosine schedule.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, not on biases/norms.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    schedule: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule.")
    warmup_epochs: float = Field(0.0, ge=0, description="Linear warmup, epochs (fractions allowed).")
    layer_decay: float | None = Field(None, gt=0, le=1, description="Layer-wise lr decay factor, e.g. 0.75 "
                                      "(default: off).")
    linear_probe: bool = Field(False, description="Train the head only, images through the frozen "
                               "backbone at every step (default: full fine-tuning).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto = bf16 on CUDA, "
                                                               "fp32 on CPU.")
    clip_grad: float | None = Field(None, gt=0, description="Clip the global grad norm (default: off).")
    compile: bool = Field(False, description="torch.compile the model (runtime: may change on resume).")
    pos_weight: bool = Field(True, description="BCE pos_weight = negatives/positives per finding.")

    # augmentation (study: hflip 0.5, rotation 7 degrees)
    augment: bool = Field(True, description="Training augmentation.")
    hflip: float = Field(0.5, ge=0, le=1, description="Horizontal flip probability.")
    rotate: float = Field(7.0, ge=0, le=180, description="Max rotation, degrees.")

    # selection and control
    patience: int = Field(10, ge=0, description="Stop after N epochs without val improvement; 0 = never.")
    seed: int = Field(0, ge=0, lt=2**63, description="Seed of head init, shuffling, augmentation.")

    # domain-supervised initialization (init = checkpoint:RUN/best.safetensors)
    keep_shared_head: bool = Field(False, description="checkpoint: inits: keep the head rows of findings "
                                   "shared with the checkpoint.")
    allow_overlap: bool = Field(False, description="checkpoint: inits: accept patients shared with the "
                                "checkpoint's training cache.")
    # label budget and label noise of the training split (data/budget.py); hashed only when set
    label_fraction: float = Field(1.0, gt=0, description="Train on this share of the training patients "
                                  "(nested, stratified by finding), or on this many patients when above 1.")
    label_noise: float = Field(0.0, ge=0, lt=1, description="Flip this share of the known training labels "
                               "of each finding (symmetric).")
    label_seed: int = Field(0, ge=0, description="Seed of the label budget and the label noise.")

    # runtime only (not part of the run's identity)
    workers: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=0, le=256,
                         description="Data loader processes (default: min(8, CPUs)).")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if available).")
    log_every: int = Field(10, ge=1, description="Optimizer steps per log line.")
    checkpoint_every: int = Field(0, ge=0, description="Also save last.pt every N optimizer steps; 0 = at "
                                  "epoch ends only.")
    deterministic: bool = Field(False, description="Deterministic algorithms: bit-exact reruns, slower on "
                                "GPU.")
    tracker: Literal["mlflow", "wandb"] | None = Field(None, description="Also log to an experiment "
                                                       "tracker: mlflow (MLFLOW_TRACKING_URI) or wandb (pip "
                                                       "install 'cxrbench[mlflow]' / '[wandb]').")
    tracker_project: str | None = Field(None, description="MLflow experiment / W&B project (default: "
                                        "cxrbench).")
    tracker_name: str | None = Field(None, description="The run's name in the tracker (default: the run "
                                     "folder).")

    # adaptation (docs/training.md#adaptation-methods); hashed into a study key only when not default
    adaptation: str = Field(DEFAULT_ADAPTATION, description="Adaptation method (train/methods/).")
    embed_batch_size: int | None = Field(None, ge=1, description="Methods on cached embeddings: first batch "
                                         "of the embedding pass, halved on out-of-memory (default: 256 on "
                                         "CUDA, 64 on CPU).")

    @field_validator("findings", mode="before")
    @classmethod
    def _split_findings(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if v is not None and len(v) == 0:
            raise ValueError("must name at least one finding")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("lists a finding twice")
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str | None) -> str | None:
        return device_option(v)

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        return betas_option(v)

    @field_validator("init", "cache", "out")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not str(v).strip():
            raise ValueError("must not be empty")
        return str(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainSettings:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.keep_shared_head and not _is_checkpoint(self.init):
            raise ValueError("keep_shared_head needs init = checkpoint:PATH")
        if self.linear_probe and self.adaptation != DEFAULT_ADAPTATION:
            raise ValueError("linear_probe (the head trained through the frozen backbone) cannot be "
                             f"combined with adaptation {self.adaptation!r}; for a head on cached embeddings "
                             "use adaptation linear without linear_probe")
        return self

    def micro_batch(self, world_size: int = 1) -> int:
        """Images per process per micro-step; raises InputError when the batch does not divide."""
        per = self.batch_size // self.grad_accum
        if per % world_size:
            raise InputError(
                f"{spell('--batch-size')} {self.batch_size} / {spell('--grad-accum')} {self.grad_accum} = "
                f"{per} images per "
                f"micro-step cannot be split over {world_size} processes", where="batch_size",
                fix=f"use a {spell('--batch-size')} divisible by {self.grad_accum * world_size}")
        return per // world_size


def _is_checkpoint(init: str) -> bool:
    from cxrbench.models.resolve import parse_init

    try:
        return parse_init(init).is_checkpoint
    except InputError:
        return False
