"""The training configuration: one frozen, validated pydantic model (no globals).

Defaults follow the reference study (Tayebi Arasteh et al. 2024): AdamW, lr 1e-5, weight decay 0,
batch 30, up to 100 epochs, horizontal flip p=0.5 and rotation up to 7 degrees, BCE with per-finding
positive weights. Every field is a key of ``config.yaml`` (section ``train``) in the run folder.

Fields in :data:`RUNTIME_KEYS` change how a run executes but not what it computes (data loader
workers, device, logging and checkpoint intervals, determinism, compilation, the experiment tracker;
the cache path, whose content is checked by hash); every other field is part of the run's identity
and must match when an existing run folder is resumed. :meth:`TrainConfig.for_run` is the one resume
merge rule (options left out come from the run's ``config.yaml``), shared by the CLI, the Python API and
the study; :meth:`TrainConfig.step_identity` is what a study hashes into a training step's key.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cxrbench.common.errors import InputError
from cxrbench.common.runconfig import RunConfig

RUNTIME_KEYS: frozenset[str] = frozenset(
    {"cache", "out", "workers", "device", "log_every", "checkpoint_every", "deterministic", "compile",
     "tracker", "tracker_project", "tracker_name", "embed_batch_size"}
)
"""Keys that change how a run executes, not what it computes (never part of a run's identity)."""

RUN_OWNED_KEYS: tuple[str, ...] = ("cache", "init", "out", "findings")
"""Keys a study sets itself for every run (a study's ``train:`` sections may not set them)."""

# The identity keys hashed into the step keys of studies made before a key was added. A study
# step key must not move when cxrbench learns a new option, so a key outside this list is hashed
# only when it differs from its default; ``compile`` was hashed (as false) before it became a
# runtime key and stays in every key as false.
_KEYED_V1: tuple[str, ...] = (
    "image_size", "epochs", "batch_size", "grad_accum", "lr", "min_lr", "weight_decay", "betas",
    "schedule", "warmup_epochs", "layer_decay", "linear_probe", "precision", "clip_grad", "pos_weight",
    "augment", "hflip", "rotate", "patience", "seed", "keep_shared_head", "allow_overlap",
)
_KEYED_CONSTANTS: dict[str, Any] = {"compile": False}

ADAPTATIONS: tuple[str, ...] = ("full", "linear", "lora", "knn")
"""``full``: the fine-tuning loop (with ``linear_probe``: only the head trains, images go through the
frozen backbone every step); ``lora``: the same loop with low-rank adapters on the backbone, merged
into best.safetensors; ``linear``: a linear head fitted on frozen embeddings computed once and cached
beside the cache; ``knn``: cosine kNN over those embeddings."""

FROZEN_ADAPTATIONS: tuple[str, ...] = ("linear", "knn")
"""Adaptations that never backpropagate through the backbone (they read cached embeddings)."""

ADAPTATION_OPTIONS: dict[str, tuple[str, ...]] = {
    "lora": ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"),
    "knn": ("knn_k", "knn_temperature"),
}
"""Options that belong to one adaptation: left out of :meth:`TrainConfig.identity` (and so of the
study key) for every other adaptation, where they change nothing."""


class TrainConfig(RunConfig):
    """Everything ``cxrbench train`` needs; immutable once built.

    ``batch_size`` is the *global* batch: images per optimizer step over all processes and
    gradient-accumulation micro-steps, so results do not depend on the number of GPUs.
    """

    SECTION: ClassVar[str] = "train"

    # what to train on, from what, into where
    cache: str = Field(description="prepared cache directory (Contract 3)")
    init: str = Field(description="initialization name (see `cxrbench weights list`)")
    out: str = Field(description="run directory (Contract 4)")
    findings: tuple[str, ...] | None = Field(None, description="subset of the cache's findings; all if unset")
    image_size: int | None = Field(None, ge=16, le=4096, description="model input, px; the cache's if unset")

    # optimization (study defaults)
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(30, ge=1, description="global images per optimizer step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    lr: float = Field(1e-5, gt=0, le=10.0)
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup length, epochs (fractions allowed)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay; off if unset")
    linear_probe: bool = Field(False, description="freeze the backbone, train the head only")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 on CUDA")
    clip_grad: float | None = Field(None, gt=0, description="max global grad norm; off when unset")
    compile: bool = Field(False, description="torch.compile the model (runtime: may change on resume)")
    pos_weight: bool = Field(True, description="BCE positive weight negatives/positives per finding")

    # augmentation (study: hflip 0.5, rotation 7 degrees)
    augment: bool = True
    hflip: float = Field(0.5, ge=0, le=1, description="horizontal flip probability")
    rotate: float = Field(7.0, ge=0, le=180, description="max rotation, degrees")

    # selection and control
    patience: int = Field(10, ge=0, description="epochs without val improvement before stopping; 0 = off")
    seed: int = Field(0, ge=0, lt=2**63)

    # domain-supervised initialization (init = checkpoint:RUN/best.safetensors)
    keep_shared_head: bool = Field(False, description="keep head rows of findings shared with the checkpoint")
    allow_overlap: bool = Field(False, description="accept patients the checkpoint was trained on")
    # label budget and label noise of the training split (data/budget.py); hashed only when set
    label_fraction: float = Field(1.0, gt=0, description="share of training patients kept (nested, "
                                  "stratified), or a patient count above 1")
    label_noise: float = Field(0.0, ge=0, lt=1, description="share of known training labels flipped "
                               "per finding (symmetric)")
    label_seed: int = Field(0, ge=0, description="seed of the label budget and the label noise")

    # runtime only (not part of the run's identity)
    workers: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=0, le=256)
    device: str | None = Field(None, description="cpu, cuda, cuda:N; auto when unset")
    log_every: int = Field(10, ge=1, description="optimizer steps between log.jsonl lines")
    checkpoint_every: int = Field(0, ge=0, description="optimizer steps between last.pt saves; 0 = per epoch")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms for bit-exact reruns")
    tracker: Literal["mlflow", "wandb"] | None = Field(None, description="also log to MLflow or W&B")
    tracker_project: str | None = Field(None, description="MLflow experiment / W&B project [cxrbench]")
    tracker_name: str | None = Field(None, description="the run's name in the tracker [the run folder]")

    # adaptation (docs/training.md#adaptation-methods); hashed into a study key only when not default
    adaptation: Literal["full", "linear", "lora", "knn"] = Field(
        "full", description="full (fine-tune), linear (head on cached embeddings), lora, knn")
    lora_rank: int = Field(8, ge=1, le=4096, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha (the update is scaled by alpha/r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LoRA branch's input")
    lora_targets: tuple[str, ...] | None = Field(
        None, description="module names to adapt (e.g. qkv,proj,fc1,fc2); unset: the architecture's default")
    knn_k: tuple[int, ...] = Field((10, 20, 50, 100), description="neighbour counts to choose from on val")
    knn_temperature: tuple[float, ...] = Field((0.02, 0.07, 0.2),
                                               description="vote temperatures to choose from on val")
    embed_batch_size: int | None = Field(None, ge=1, description="first batch of the embedding pass "
                                         "(halved on out-of-memory); runtime [256 on CUDA, 64 on CPU]")

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

    @field_validator("lora_targets", "knn_k", "knn_temperature", mode="before")
    @classmethod
    def _split_lists(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        elif isinstance(v, int | float) and not isinstance(v, bool):
            v = [v]
        if v is not None and len(v) == 0:
            raise ValueError("must list at least one value")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("lists a value twice")
        return v

    @field_validator("knn_k")
    @classmethod
    def _check_k(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in v):
            raise ValueError("every k must be at least 1")
        return tuple(sorted(v))

    @field_validator("knn_temperature")
    @classmethod
    def _check_temperature(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < t <= 100 for t in v):
            raise ValueError("every temperature must be in (0, 100]")
        return tuple(sorted(v))

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str | None) -> str | None:
        if v is None or v == "auto":
            return None
        head, _, idx = v.partition(":")
        if head not in ("cpu", "cuda", "mps") or (idx and not idx.isdigit()):
            raise ValueError("must be cpu, cuda, cuda:N or mps")
        return v

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("both betas must be in [0, 1)")
        return v

    @field_validator("init", "cache", "out")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not str(v).strip():
            raise ValueError("must not be empty")
        return str(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.keep_shared_head and not _is_checkpoint(self.init):
            raise ValueError("keep_shared_head needs init = checkpoint:PATH")
        if self.linear_probe and self.adaptation != "full":
            raise ValueError("linear_probe (the head trained through the frozen backbone) cannot be "
                             f"combined with adaptation {self.adaptation!r}; for a head on cached embeddings "
                             "use adaptation linear without linear_probe")
        return self

    # --- construction and comparison -------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes: everything but :data:`RUNTIME_KEYS` and the
        options of adaptations other than this run's (:data:`ADAPTATION_OPTIONS`)."""
        unused = set(self.unused_options())
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS and k not in unused}

    def unused_options(self, keys: Any = None) -> list[str]:
        """The options (of ``keys``, default all) that belong to an adaptation other than this run's."""
        other = {k for a, ks in ADAPTATION_OPTIONS.items() if a != self.adaptation for k in ks}
        return [k for k in (type(self).model_fields if keys is None else keys) if k in other]

    def step_identity(self) -> dict[str, Any]:
        """What a study hashes for a training step: :meth:`identity` without the keys the study
        sets per run, stable across cxrbench versions (see ``_KEYED_V1``)."""
        ident = self.identity()
        defaults = _defaults()
        out = {k: ident[k] for k in _KEYED_V1}
        out.update(_KEYED_CONSTANTS)
        for k, v in ident.items():
            if k not in _KEYED_V1 and k not in RUN_OWNED_KEYS and v != defaults.get(k):
                out[k] = v
        return out

    @classmethod
    def for_run(cls, out: str | os.PathLike, options: dict[str, Any], *,
                config_file: str | os.PathLike | None = None, overwrite: bool = False,
                where: str = "train config") -> TrainConfig:
        """The config of the run folder ``out``: the one resume merge rule.

        Options left out come from ``out/config.yaml`` when the run exists (and is not being
        restarted with ``overwrite``), then from ``config_file``; the ``options`` given win. A new
        run needs ``cache`` and ``init``. Values equal to None count as not given.
        """
        merged = cls.merged_options(out, {k: v for k, v in options.items() if v is not None},
                                    config_file=config_file, overwrite=overwrite)
        for key in ("cache", "init"):
            if key not in merged:
                raise InputError(f"--{key} is required for a new run", where=str(out),
                                 fix=f"give --{key} (or point --out at an existing run to resume it)")
        return cls.from_dict(merged, where=where)

    def micro_batch(self, world_size: int = 1) -> int:
        """Images per process per micro-step; raises InputError when the batch does not divide."""
        per = self.batch_size // self.grad_accum
        if per % world_size:
            raise InputError(
                f"--batch-size {self.batch_size} / --grad-accum {self.grad_accum} = {per} images per "
                f"micro-step cannot be split over {world_size} processes", where="batch_size",
                fix=f"use a --batch-size divisible by {self.grad_accum * world_size}")
        return per // world_size


def _is_checkpoint(init: str) -> bool:
    from cxrbench.models.resolve import parse_init

    try:
        return parse_init(init).is_checkpoint
    except InputError:
        return False


def _defaults() -> dict[str, Any]:
    return TrainConfig(cache="-", init="-", out="-").to_dict()
