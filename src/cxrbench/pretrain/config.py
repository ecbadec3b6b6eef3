"""The pretraining configuration: one frozen, validated pydantic model, as :mod:`cxrbench.train.config`.

Defaults follow the DINOv2 recipe (Oquab et al. 2024, ``dinov2/configs/ssl_default_config.yaml``)
where it fits a single-node continued pretraining: 2 global + 8 local crops, DINO head with 65,536
prototypes (2048 hidden, 256 bottleneck), iBOT on, KoLeo 0.1, teacher momentum 0.992 -> 1 (cosine),
teacher temperature 0.04 -> 0.07 over 30 epochs, student temperature 0.1, weight decay 0.04 -> 0.2
(cosine), layer-wise lr decay 0.9, gradient clipping 3.0, the last head layer frozen for the first
epoch; the crops are milder than DINOv2's (docs/pretraining.md). ``batch_size`` is the global batch.

Fields in :data:`RUNTIME_KEYS` change how a run executes, not what it computes (the cache paths
among them: their content is checked by manifest hash and by the hash of the selected images).
:meth:`PretrainConfig.for_run` is the resume merge rule of ``train`` (saved ``config.yaml`` <
``--config`` file < given options).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cxrbench.common.errors import InputError, spell
from cxrbench.common.runconfig import RunConfig, betas_option, device_option, fields_doc

RUNTIME_KEYS: frozenset[str] = frozenset(
    {"caches", "exclude", "unlabeled", "out", "workers", "device", "log_every", "checkpoint_every",
     "deterministic"}
)
"""Keys that change how a run executes, not what it computes (never part of a run's identity)."""

SECTION = "pretrain"  # the config.yaml section holding the PretrainConfig

RUN_OWNED_KEYS: tuple[str, ...] = ("caches", "exclude", "unlabeled", "init", "out")
"""Keys a study sets itself for every pretraining run (and hashes through its own step config)."""

# The identity keys of the first version. A study step key must not move when cxrbench learns a
# new option, so a key outside this list is hashed only when it differs from its default.
_KEYED_V1: tuple[str, ...] = (
    "epochs", "batch_size", "grad_accum", "lr", "min_lr", "warmup_epochs", "weight_decay",
    "weight_decay_end", "betas", "layer_decay", "clip_grad", "drop_path", "freeze_last_layer_epochs",
    "precision", "momentum", "momentum_end", "teacher_temp", "warmup_teacher_temp",
    "warmup_teacher_temp_epochs", "student_temp", "centering", "center_momentum", "sinkhorn_iterations",
    "out_dim", "head_hidden", "head_bottleneck", "head_layers", "dino_weight", "ibot", "ibot_weight",
    "ibot_separate_head", "mask_probability", "mask_ratio", "koleo_weight", "global_size", "local_size",
    "local_crops", "global_scale", "local_scale", "hflip", "rotate", "brightness", "contrast", "blur",
    "blur_sigma", "seed",
)


class PretrainConfig(RunConfig):
    """Everything ``cxrbench pretrain`` needs; immutable once built.

    Every keyword is an option of ``cxrbench pretrain`` (``lr`` is ``--lr``, ``caches`` is
    ``--cache``, repeated) with the same description (listed below). An unknown keyword or a bad
    value raises one :class:`~cxrbench.common.errors.InputError`.

    Example::

        cfg = cxrbench.PretrainConfig(caches=["cache/nih-224"], init="dinov2-vitb14", out="runs/ssl",
                                      epochs=10, batch_size=64)
        result = cxrbench.pretrain(cfg)        # its teacher: init checkpoint:runs/ssl/best.safetensors
    """

    SECTION: ClassVar[str] = SECTION

    # data, start, output
    caches: tuple[str, ...] = Field(description="A prepared cache; repeat for several. Only its train split "
                                                "is used.")
    init: str = Field(description="Initialization: dinov2-vitb14, dinov3-vitb16, random-<arch>, "
                                  "checkpoint:PATH (`cxrbench weights list`).")
    out: str = Field(description="Run folder to create or resume.")
    exclude: tuple[str, ...] = Field(
        (),
        description="An index or cache whose val/test patients are left out too; repeat for several (a study "
                    "passes every dataset).",
    )
    unlabeled: tuple[str, ...] = Field(
        (),
        description="A cache used whole, every split: data you never evaluate on (e.g. a source site's "
                    "archive; its val/test patients are not held out); repeat for several.",
    )

    # optimization
    epochs: int = Field(100, ge=1, le=100_000, description="Epochs.")
    batch_size: int = Field(64, ge=2, description="Global images per optimizer step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    lr: float = Field(2e-4, gt=0, le=10.0, description="Peak learning rate (after warmup).")
    min_lr: float = Field(1e-6, ge=0, description="Floor of the cosine schedule.")
    warmup_epochs: float = Field(10.0, ge=0, description="Linear lr warmup, epochs.")
    weight_decay: float = Field(0.04, ge=0, description="Weight decay at the start of its cosine schedule.")
    weight_decay_end: float = Field(0.2, ge=0, description="Weight decay at the end of its cosine schedule.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (two numbers in [0, 1)).")
    layer_decay: float | None = Field(0.9, gt=0, le=1, description="Layer-wise lr decay; off when unset.")
    clip_grad: float | None = Field(3.0, gt=0, description="Max global grad norm; off when unset.")
    drop_path: float = Field(0.1, ge=0, lt=1, description="Stochastic depth of the student.")
    freeze_last_layer_epochs: float = Field(1.0, ge=0, description="epochs the prototypes stay fixed")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on CUDA, fp32 on "
                                                                           "CPU.")

    # self-distillation
    momentum: float = Field(0.992, ge=0, le=1, description="Teacher EMA momentum at the start (cosine to "
                                                           "momentum_end).")
    momentum_end: float = Field(1.0, ge=0, le=1, description="teacher EMA momentum at the end (cosine)")
    teacher_temp: float = Field(0.07, gt=0, le=1, description="Teacher temperature after warmup.")
    warmup_teacher_temp: float = Field(0.04, gt=0, le=1, description="teacher temperature at the start")
    warmup_teacher_temp_epochs: float = Field(30.0, ge=0, description="teacher temperature warmup, epochs")
    student_temp: float = Field(0.1, gt=0, le=1, description="Student temperature.")
    centering: Literal["center", "sinkhorn"] = Field(
        "center", description="Teacher targets: center (DINO's centering) or sinkhorn (DINOv2's "
                              "Sinkhorn-Knopp)."
    )
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the teacher's center "
                                                             "(centering: center).")
    sinkhorn_iterations: int = Field(3, ge=1, le=100, description="Sinkhorn-Knopp iterations (centering: "
                                                                  "sinkhorn).")
    out_dim: int = Field(65536, ge=2, description="Prototypes of the DINO head.")
    head_hidden: int = Field(2048, ge=1, description="Hidden width of the DINO head's MLP.")
    head_bottleneck: int = Field(256, ge=1, description="Bottleneck width before the prototypes.")
    head_layers: int = Field(3, ge=1, le=8, description="Layers of the DINO head's MLP.")
    dino_weight: float = Field(1.0, ge=0, description="Weight of the DINO (CLS) loss.")
    ibot: bool = Field(True, description="iBOT masked-patch loss, ViTs only.")
    ibot_weight: float = Field(1.0, ge=0, description="Weight of the iBOT (masked patch) loss.")
    ibot_separate_head: bool = Field(False, description="a second head for patch tokens")
    mask_probability: float = Field(0.5, ge=0, le=1, description="share of global views that are masked")
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="(min, max) share of masked patches")
    koleo_weight: float = Field(0.1, ge=0, description="KoLeo regularizer on the student's CLS features; 0 = "
                                                       "off.")

    # crops
    global_size: int | None = Field(
        None,
        ge=16,
        le=4096,
        description="Global view side, px (default: the cache's size, to a patch multiple).",
    )
    local_size: int | None = Field(
        None, ge=8, le=4096, description="Local view side, px (default: 7/16 of the global size, 98 at 224)."
    )
    local_crops: int = Field(8, ge=0, le=64, description="Local views per image.")
    global_scale: tuple[float, float] = Field((0.4, 1.0), description="MIN,MAX area fraction of global "
                                                                      "crops.")
    local_scale: tuple[float, float] = Field((0.1, 0.4), description="MIN,MAX area fraction of local crops.")
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip per view.")
    rotate: float = Field(7.0, ge=0, le=180, description="max rotation, degrees")
    brightness: float = Field(0.2, ge=0, lt=1, description="Max relative brightness jitter per view.")
    contrast: float = Field(0.2, ge=0, lt=1, description="Max relative contrast jitter per view.")
    blur: float = Field(0.2, ge=0, le=1, description="probability of a Gaussian blur per view")
    blur_sigma: tuple[float, float] = Field((0.1, 1.5), description="(min, max) blur sigma, px")

    seed: int = Field(0, ge=0, lt=2**63, description="Seed of heads, shuffling, views, masks.")

    # runtime only
    workers: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=0, le=256,
                         description="Data loader processes (default: min(8, CPUs)).")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if available).")
    log_every: int = Field(10, ge=1, description="Optimizer steps per log line.")
    checkpoint_every: int = Field(0, ge=0, description="Also save last.pt every N optimizer steps; 0 = at "
                                                       "epoch ends only.")
    deterministic: bool = Field(False, description="Deterministic algorithms: bit-exact reruns, slower on "
                                                   "GPU.")

    @field_validator("caches", "exclude", "unlabeled", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        if isinstance(v, str | os.PathLike):
            v = [v]
        return tuple(str(p) for p in v) if v is not None else v

    @field_validator("caches")
    @classmethod
    def _some_cache(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one cache")
        if len(set(v)) != len(v):
            raise ValueError("lists a cache twice")
        return v

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str | None) -> str | None:
        return device_option(v)

    @field_validator("global_scale", "local_scale", "mask_ratio", "blur_sigma", "betas", mode="before")
    @classmethod
    def _pair_text(cls, v: Any) -> Any:
        """``"0.4,1.0"`` (the command line's and YAML's shorthand) -> (0.4, 1.0)."""
        if not isinstance(v, str):
            return v
        parts = [x.strip() for x in v.split(",")]
        try:
            lo, hi = (float(x) for x in parts)
        except ValueError:
            raise ValueError(f"{v!r} is not MIN,MAX (two numbers separated by a comma, e.g. "
                             f"0.4,1.0)") from None
        return lo, hi

    @field_validator("global_scale", "local_scale", "mask_ratio")
    @classmethod
    def _fractions(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("must be (min, max) with 0 < min <= max <= 1")
        return v

    @field_validator("betas")
    @classmethod
    def _check_betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        return betas_option(v)

    @field_validator("blur_sigma")
    @classmethod
    def _sigma(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 20.0:
            raise ValueError("must be (min, max) with 0 < min <= max <= 20 px")
        return v

    @field_validator("init", "out")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not str(v).strip():
            raise ValueError("must not be empty")
        return str(v)

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        if self.momentum_end < self.momentum:
            raise ValueError(f"momentum_end ({self.momentum_end}) is below momentum ({self.momentum})")
        if self.dino_weight == 0 and (not self.ibot or self.ibot_weight == 0):
            raise ValueError("with dino_weight 0 and no iBOT loss nothing is learned")
        return self

    # --- construction and comparison -------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes (everything but :data:`RUNTIME_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}

    def step_identity(self) -> dict[str, Any]:
        """What a study hashes for a pretraining step: :meth:`identity` without the keys the study
        sets per run, stable across cxrbench versions (see ``_KEYED_V1``)."""
        ident = self.identity()
        defaults = PretrainConfig(caches=["-"], init="-", out="-").to_dict()
        out = {k: ident[k] for k in _KEYED_V1}
        for k, v in ident.items():
            if k not in _KEYED_V1 and k not in RUN_OWNED_KEYS and v != defaults.get(k):
                out[k] = v
        return out

    def micro_batch(self, world_size: int = 1) -> int:
        """Images per process per micro-step; raises InputError when the batch does not divide."""
        per = self.batch_size // self.grad_accum
        if per % world_size or per // world_size < 2:
            raise InputError(
                f"{spell('--batch-size')} {self.batch_size} / {spell('--grad-accum')} {self.grad_accum} = "
                f"{per} images per "
                f"micro-step cannot be split over {world_size} process(es) with at least 2 images each "
                "(KoLeo and the DINO targets need a batch)",
                where="batch_size",
                fix=f"use a {spell('--batch-size')} divisible by {self.grad_accum * world_size} and at least "
                f"{2 * self.grad_accum * world_size}",
            )
        return per // world_size

    @classmethod
    def for_run(
        cls,
        out: str | os.PathLike,
        options: dict[str, Any],
        *,
        config_file: str | os.PathLike | None = None,
        overwrite: bool = False,
        where: str = "pretrain config",
    ) -> PretrainConfig:
        """The config of the run folder ``out``: the one resume merge rule (as ``TrainConfig.for_run``).

        Options left out come from ``out/config.yaml`` when the run exists (and is not restarted
        with ``overwrite``), then from ``config_file``; the ``options`` given win; None = not given.
        A new run needs ``caches`` and ``init``.
        """
        merged = cls.merged_options(out, {k: v for k, v in options.items() if v is not None and v != ()},
                                    config_file=config_file, overwrite=overwrite)
        for key, flag in (("caches", spell("--cache", "caches=")), ("init", spell("--init", "init="))):
            if not merged.get(key):
                raise InputError(
                    f"{flag} is required for a new run",
                    where=str(out),
                    fix=f"give {flag} (or point {spell('--out', 'out=')} at an existing run to resume it)",
                )
        return cls.from_dict(merged, where=where)


PretrainConfig.__doc__ = fields_doc(PretrainConfig)  # help() lists every keyword with its description
