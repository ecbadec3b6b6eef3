"""The interface every adaptation method implements, and what its drivers hand it.

A :class:`Method` says what it trains (its ``regime``: ``loop``, the fine-tuning loop with the
backbone in the forward pass at every step, or ``embeddings``, a fit on frozen-backbone features
computed once and cached beside the cache), the options it owns (a :class:`MethodOptions` model of
flat ``config.yaml`` keys), whether its runs vary with the seed, how a finished run scores images
(:meth:`Method.scorer`: the one scoring path of ``evaluate``, ``predict`` and external validation,
in the precision the run was trained in), and the words the Methods text uses for it.

The drivers (:mod:`cxrbench.train.loop` for ``loop``, :mod:`cxrbench.train.frozen` for
``embeddings``) own the run folder, the data and the process group; a method only adapts the
model (:meth:`Method.prepare`) or fits on the features (:meth:`Method.fit`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.train.settings import MethodOptions, TrainSettings

if TYPE_CHECKING:  # torch is imported where it is used: the registry (and `cxrbench --help`) stays light
    import torch
    from torch import nn

    from cxrbench.train.runlog import Rank0Writer

Regime = Literal["loop", "embeddings"]


# --- the loop regime: how a method adapts the model the fine-tuning loop trains ----------------------

@dataclass
class Adaptation:
    """The adaptation of one run as the fine-tuning loop sees it: the head, the parameter counts, and
    (in subclasses) what trains in an epoch, what is saved as best and what is recorded."""

    kind: str
    head: nn.Module
    total_params: int
    trainable_params: int
    head_params: int
    backbone_frozen: bool = False

    def set_mode(self, model: nn.Module) -> None:
        """Training mode for an epoch; a frozen backbone stays in eval mode (no dropout, fixed norms)."""
        model.train()
        if self.backbone_frozen:
            model.eval()
            self.head.train()

    def best_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The weights written to ``best.safetensors`` (plain timm keys)."""
        from cxrbench.train.checkpoint import state_dict_cpu

        return state_dict_cpu(model)

    def record(self) -> dict[str, Any]:
        """What ``best.json`` and the ``start`` line of ``log.jsonl`` say about the adaptation."""
        return {"adaptation": self.kind, "trainable_params": self.trainable_params,
                "num_params": self.total_params}

    def describe(self) -> str:
        """One console line: what trains and how many parameters."""
        share = f"{self.trainable_params:,} of {self.total_params:,} parameters trainable"
        if self.backbone_frozen:
            return f"linear probe through the frozen backbone: {share} (the head)"
        return f"full fine-tuning: {share}"


def count_params(model: nn.Module, head: nn.Module) -> dict[str, int]:
    """``total_params``, ``trainable_params`` and ``head_params`` of a model as it will train."""
    return {"total_params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "head_params": sum(p.numel() for p in head.parameters())}


# --- the embeddings regime: a fit on cached frozen-backbone features ---------------------------------

@dataclass
class EmbeddingTask:
    """What the embeddings driver hands a method: the run's settings, the frozen backbone and its
    classifier ``head`` (state-dict keys ``head_keys``), float32 features ``[N, D]`` of the train and
    val splits with their labels ``[N, K]`` (NaN = unknown), the train images' ids, the positive weights
    ``[K]``, the embeddings' store key, the device, the run folder, the log writer and a progress bar
    maker (``make_bar(total_steps) -> ProgressBar``)."""

    cfg: TrainSettings
    model: nn.Module
    head: nn.Module
    head_keys: list[str]
    findings: list[str]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    train_ids: np.ndarray
    pos_weight: np.ndarray
    embeddings_key: str
    device: torch.device
    run_dir: Path
    writer: Rank0Writer
    make_bar: Any  # total steps -> cxrbench.train.console.ProgressBar


@dataclass
class EmbeddingFit:
    """What a fit on embeddings returns: the weights for ``best.safetensors`` (``head_keys`` of them are
    the head; none for a method without a classifier), the best/progress state and history in the
    loop's format, the chosen point's validation figures, the method's section of ``best.json`` and
    facts for the weights file's header (see :func:`cxrbench.train.checkpoint.save_best`)."""

    weights: dict[str, torch.Tensor]
    head_keys: list[str]
    best: dict[str, Any]
    progress: dict[str, Any]
    history: list[dict[str, Any]]
    val: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    header: dict[str, Any] = field(default_factory=dict)  # facts for best.safetensors' header
    findings: list[str] | None = None  # the findings the run predicts, when a subset of the task's


def single_point_fit(val_mean_auroc: float) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """``(best, progress, history)`` of a fit that has no epochs (a choice made once on val)."""
    best = {"value": val_mean_auroc, "epoch": 1, "bad_epochs": 0}
    progress = {"epoch": 1, "micro": 0, "step": 0, "finished": True, "stopped_early": False}
    return best, progress, [{"epoch": 1, "step": 0, "val_mean_auroc": val_mean_auroc, "val_loss": None}]


# --- scoring: the one path from a finished run to probabilities ---------------------------------------

def run_autocast(precision: str | None, device: torch.device) -> contextlib.AbstractContextManager | None:
    """Autocast in the precision a run was trained and validated in (bf16/fp16 on CUDA), else None:
    scores are computed the way the thresholds chosen on them were."""
    import torch

    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(precision or "fp32"))
    return torch.autocast(device.type, dtype=amp) if amp is not None and device.type == "cuda" else None


def load_run_network(run_dir: str | os.PathLike, device: torch.device, *, head: bool = True) -> nn.Module:
    """The network in a run's ``best.safetensors`` (an empty model of its architecture, every weight
    loaded: no download) in eval mode on ``device``; ``head=False`` for a headless backbone."""
    from cxrbench.models.build import create_model
    from cxrbench.train.checkpoint import load_best

    weights, meta = load_best(run_dir)
    classes = len(meta["findings"]) if head else 0
    model, _ = create_model(f"random-{meta['arch']}", classes, image_size=int(meta["image_size"]),
                            **(meta.get("model_kwargs") or {}))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise InputError(f"best.safetensors does not fit architecture {meta['arch']!r} (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})", where=str(run_dir),
                         fix="the run was trained with another cxrbench/timm version; re-train it")
    return model.to(device).eval()


def run_transform(meta: dict[str, Any], device: torch.device) -> nn.Module:
    """The run's eval transform: uint8 ``[B, H, W]`` -> normalized float ``[B, 3, S, S]`` on ``device``."""
    from cxrbench.data.augment import BatchTransform

    return BatchTransform(meta["mean"], meta["std"], out_size=int(meta["image_size"])).to(device).eval()


class Scorer:
    """Probabilities of a finished run for a dataset of images, computed in the run's precision.

    ``dataset`` is a :class:`cxrbench.data.dataset.CacheDataset` split or an in-memory
    :class:`cxrbench.data.dataset.ArrayDataset` (files given to ``predict``); ``score`` returns float64
    ``[N, K]`` in the run's finding order. ``classifier`` is the network saliency maps explain (None
    for a method without one). This base class scores by the sigmoid of the run's own network.
    """

    def __init__(self, run_dir: str | os.PathLike, meta: dict[str, Any], device: torch.device) -> None:
        self.run_dir, self.meta, self.device = Path(run_dir), meta, device
        self.transform = run_transform(meta, device)
        self.classifier: nn.Module | None = load_run_network(run_dir, device)

    def score(self, dataset: Any, *, batch_size: int = 64, split: str | None = None) -> np.ndarray:
        """float64 ``[N, K]`` probabilities of every image of ``dataset`` (``split``: its cache split)."""
        from cxrbench.models.forward import predict_dataset

        if self.classifier is None:
            raise RuntimeError("this scorer has no network to score with")
        _, logits = predict_dataset(self.classifier, dataset, self.transform, self.device,
                                    batch_size=batch_size,
                                    autocast=run_autocast(self.meta.get("precision"), self.device))
        return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


# --- the method ----------------------------------------------------------------------------------------

class Method:
    """One adaptation method. Subclasses set the class attributes and implement the hooks of their
    regime (:meth:`prepare` for ``loop``, :meth:`fit` for ``embeddings``)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `cxrbench train --help` and the docs
    regime: ClassVar[Regime]
    options: ClassVar[type[MethodOptions] | None] = None  # the config keys this method owns
    stochastic: ClassVar[bool] = True  # runs with different seeds differ
    has_classifier: ClassVar[bool] = True  # a network that maps an image to logits (export, saliency)
    # False: the method learns nothing from the training split (zero-shot): the embeddings driver embeds
    # the val split only, and a study runs it once, with all labels and no label noise (the axes of the
    # training labels do not apply to it)
    uses_training_data: ClassVar[bool] = True
    export_formats: ClassVar[tuple[str, ...]] = ("hub", "onnx")  # `cxrbench export --format` it supports

    # -- before anything runs ------------------------------------------------------------------------
    def check_init(self, init: str, where: str | None = None) -> None:
        """Refuse an init this method cannot adapt (one InputError), before any data is read: the
        training command and a study's load call it (``init`` as written; ``domain:``/``ssl:`` arms too)."""

    # -- training --------------------------------------------------------------------------------------
    def prepare(self, cfg: TrainSettings, model: nn.Module, head: nn.Module) -> Adaptation:
        """Loop regime: freeze or adapt ``model`` (CPU, just built, seeded) as ``cfg`` asks."""
        raise NotImplementedError(f"{self.name} does not train in the fine-tuning loop")

    def fit(self, task: EmbeddingTask) -> EmbeddingFit:
        """Embeddings regime: fit on the cached features of the train split, choose on val."""
        raise NotImplementedError(f"{self.name} does not fit on cached embeddings")

    def check_model(self, model: nn.Module, sample: torch.Tensor) -> None:
        """Embeddings regime: refuse a backbone this method cannot use (``sample``: a normalized batch)."""

    def describe(self, cfg: TrainSettings, trainable: int, total: int) -> str:
        """Embeddings regime: one console line on what is fitted."""
        return f"{self.name} on cached embeddings: {trainable:,} of {total:,} parameters trainable"

    def own_options(self, cfg: Any) -> MethodOptions:
        """This method's options of a run's config (typed)."""
        if self.options is None:
            raise InputError(f"adaptation {self.name} has no options", where="adaptation")
        return self.options.model_validate({k: getattr(cfg, k) for k in self.options.model_fields})

    # -- scoring --------------------------------------------------------------------------------------
    def scorer(self, run_dir: str | os.PathLike, meta: dict[str, Any], device: torch.device) -> Scorer:
        """The scorer of one finished run of this method."""
        return Scorer(run_dir, meta, device)

    def network(self, run_dir: str | os.PathLike, meta: dict[str, Any], device: torch.device) -> nn.Module:
        """The run's classifier network in eval mode on ``device`` (export, saliency): the sigmoid of its
        output is the run's score."""
        return load_run_network(run_dir, device)

    def no_classifier(self) -> str:
        """Why a run of this method has no classifier network (methods without one say)."""
        return f"a {self.name} run has no classifier model"

    def no_export(self, fmt: str) -> str:
        """Why a run of this method cannot be exported in ``fmt`` (one not in ``export_formats``)."""
        return f"a {self.name} run cannot be exported as {fmt}"

    # -- reporting ------------------------------------------------------------------------------------
    def facts(self, train: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        """What the Methods text says about one run: ``{"method": name, <own options>, ...}`` from its
        ``config.yaml`` train section and its ``best.json``."""
        keys = tuple(self.options.model_fields) if self.options is not None else ()
        return {"method": self.name, **{k: train.get(k) for k in keys if k in train}}

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        """This method in the Methods text, with what its runs recorded (``facts`` of each run)."""
        return self.summary
