"""Building the student and the EMA teacher from an init name, and the student's parameter groups.

The backbone comes from :func:`cxrbench.models.build.create_model` with ``num_classes=0`` (so the
saved teacher backbone is an init that ``create_model("checkpoint:RUN/best.safetensors", ...)``
loads strictly), built with ``dynamic_img_size=True`` for ViTs (global and local crops differ in
size; the weights do not depend on it) and the student's stochastic depth. The teacher starts as an
exact copy of the student (DINO), has no mask token and never gets gradients.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cxrbench.common.errors import InputError
from cxrbench.pretrain.heads import SSLNet

_BUILD_ONLY = ("dynamic_img_size", "drop_path_rate")  # build options of pretraining, not of the init


@dataclass
class Networks:
    """The student and teacher, what ``create_model`` built, the view sizes, and the backbone's build
    options to record (``model_kwargs`` without pretraining's own)."""

    student: SSLNet
    teacher: SSLNet
    info: Any  # cxrbench.models.build.ModelInfo
    global_size: int
    local_size: int
    patch_size: int | None
    model_kwargs: dict[str, Any]


def probe(init: str) -> tuple[int | None, bool]:
    """(patch size or None, accepts ``dynamic_img_size``) of an init's architecture, without weights
    (built on the meta device)."""
    import timm
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    from cxrbench.models.resolve import resolve_init

    r = resolve_init(init)
    with torch.device("meta"):
        model = timm.create_model(r.arch, pretrained=False, num_classes=0, **r.timm_kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = int(patch[0] if isinstance(patch, tuple | list) else patch) if patch is not None else None
    return (r.patch_size or patch), isinstance(model, VisionTransformer | Eva)


def view_sizes(
    cache_size: int, patch: int | None, global_size: int | None, local_size: int | None
) -> tuple[int, int]:
    """Default view sides: the cache's size down to a patch multiple, and 7/16 of it (98 at 224)."""
    step = patch or 1
    g = global_size or max(step, (cache_size // step) * step)
    loc = local_size or max(step, round(g * 7 / 16 / step) * step)
    for name, v in (("global_size", g), ("local_size", loc)):
        if v % step:
            raise InputError(
                f"{name} {v} is not a multiple of the patch size {step}",
                where=f"--{name}",
                fix=f"use {max(step, (v // step) * step)} or {(v // step + 1) * step}",
            )
    if loc > g:
        raise InputError(
            f"local views ({loc} px) are larger than global views ({g} px)",
            where="--local-size",
            fix="choose a local size below the global size",
        )
    return g, loc


def build_networks(cfg, cache_size: int) -> Networks:
    """Student and teacher for a :class:`~cxrbench.pretrain.config.PretrainConfig` (same on every rank:
    the backbone from ``cfg.seed`` as ``create_model`` does, the heads from a rank-independent seed)."""
    from cxrbench.models.build import create_model

    patch, dynamic = probe(cfg.init)
    g, loc = view_sizes(cache_size, patch, cfg.global_size, cfg.local_size)
    extra: dict[str, Any] = {"drop_path_rate": cfg.drop_path} if cfg.drop_path > 0 else {}
    if dynamic:
        extra["dynamic_img_size"] = True
    backbone, info = create_model(cfg.init, 0, image_size=g, seed=cfg.seed, **extra)
    head = dict(
        out_dim=cfg.out_dim,
        hidden_dim=cfg.head_hidden,
        bottleneck_dim=cfg.head_bottleneck,
        n_layers=cfg.head_layers,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        student = SSLNet(backbone, head, ibot=cfg.ibot, separate_ibot_head=cfg.ibot_separate_head)
    teacher = copy.deepcopy(student)
    teacher.mask_token = None
    teacher.requires_grad_(False)
    teacher.eval()
    kwargs = {k: v for k, v in info.model_kwargs.items() if k not in _BUILD_ONLY}
    return Networks(student, teacher, info, g, loc, info.patch_size or patch, kwargs)


def param_groups(student: SSLNet, layer_decay: float | None) -> list[dict[str, Any]]:
    """AdamW groups of the student: the backbone's (timm grouping, layer-wise lr decay, no decay on
    biases/norms/tokens), then the heads' weights and the heads' biases and mask token at lr scale 1.

    Each group carries ``wd_scale`` (1 or 0): the step's weight decay is ``wd(step) * wd_scale``.
    """
    from cxrbench.train.optim import param_groups as backbone_groups

    groups = backbone_groups(student.backbone, weight_decay=1.0, layer_decay=layer_decay)
    for g in groups:
        g["wd_scale"] = float(g["weight_decay"])
    decay, no_decay = [], []
    for name, p in student.named_parameters():
        if name.startswith("backbone.") or not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and name != "mask_token" else no_decay).append(p)
    groups.append({"params": decay, "weight_decay": 1.0, "wd_scale": 1.0, "lr_scale": 1.0})
    groups.append({"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0, "lr_scale": 1.0})
    return [g for g in groups if g["params"]]


def prototype_parameters(student: SSLNet) -> list[nn.Parameter]:
    """The heads' last-layer parameters (no update while the prototypes are frozen)."""
    heads = [student.dino_head] + ([student.ibot_head] if student.ibot_head is not None else [])
    return [p for h in heads for p in h.last_layer_parameters()]
