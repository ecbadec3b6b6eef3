"""Building a model from an init name: :func:`create_model` (timm backbone, strict weight load,
a new head drawn from a seed) and :func:`check_weights_file` (the import check).

Weights are read only from disk (see :mod:`cxrbench.models.store`); a missing file is an error
naming the files and the commands that get them, never a silent download or a silent random init.
"""


from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from cxrbench.common.errors import InputError
from cxrbench.models import safeload, store
from cxrbench.models.arch import cfg_fields, timm_create
from cxrbench.models.resolve import ResolvedInit, resolve_init

if TYPE_CHECKING:
    from torch import nn


# Arguments create_model sets itself; passing them as timm options would be ambiguous.
_RESERVED_KWARGS = frozenset(
    {
        "num_classes",
        "img_size",
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "features_only",
    }
)


@dataclass(frozen=True)
class ModelInfo:
    """What :func:`create_model` built: enough to record in ``best.json`` and to rebuild it.

    ``mean``/``std`` are the per-channel normalization for inputs in [0, 1]; ``image_size`` is the
    square input side in pixels; ``patch_size`` is None for CNNs; ``model_kwargs`` are the extra
    timm build options (rebuild with ``timm.create_model(arch, num_classes=..., img_size=...,
    **model_kwargs)``); ``weights`` is the file loaded (None for a random init);
    ``head_rows_kept`` lists the findings whose head rows came from the source checkpoint;
    ``source`` is the source checkpoint's ``best.json`` (``checkpoint:`` inits only).
    """

    init: str
    arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    patch_size: int | None
    num_classes: int
    family: str
    pretrained: bool
    weights: str | None = None
    weights_origin: str | None = None
    weights_revision: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    license: str | None = None
    head_rows_kept: tuple[str, ...] = ()
    source: dict[str, Any] | None = None
    num_params: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return asdict(self)


def _check_size(image_size: int, patch: int | None, init: str) -> None:
    if patch and image_size % patch:
        low, high = (image_size // patch) * patch, math.ceil(image_size / patch) * patch
        raise InputError(
            f"image size {image_size} is not a multiple of the patch size {patch}",
            where=f"init {init}",
            fix=f"use {low if low else high} or {high} "
            "(the cache may differ: the loader resizes to the model's size)",
        )


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if not clf:
        return ()
    return (clf,) if isinstance(clf, str) else tuple(clf)


def _head_rows(shapes: Mapping[str, tuple[int, ...]], classifier: tuple[str, ...]) -> int:
    rows = {shapes[f"{c}.weight"][0] for c in classifier if f"{c}.weight" in shapes}
    if len(rows) > 1:
        raise InputError(
            f"classifier heads {classifier} have different sizes {sorted(rows)}",
            where="weights",
            fix="the file does not match its architecture",
        )
    return rows.pop() if rows else 0


def _new_head(model: nn.Module, num_classes: int) -> None:
    """Replace the classifier by a fresh one: truncated normal (std 0.02) weights, zero bias (timm's ViT)."""
    import torch
    from torch import nn

    cast(Any, model).reset_classifier(num_classes)
    for name in _classifier_names(model):
        head = model.get_submodule(name)
        for module in head.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    with torch.no_grad():
                        module.bias.zero_()


def _keep_rows(
    model: nn.Module, source_head: Mapping[str, Any], source_findings: Sequence[str], target: Sequence[str]
) -> tuple[str, ...]:
    """Copy the head rows of findings present in both lists; returns the findings copied."""
    import torch

    (name,) = _classifier_names(model)
    head: Any = model.get_submodule(name)
    kept = []
    with torch.no_grad():
        for i, finding in enumerate(target):
            if finding in source_findings:
                j = list(source_findings).index(finding)
                head.weight[i].copy_(source_head[f"{name}.weight"][j])
                if head.bias is not None and f"{name}.bias" in source_head:
                    head.bias[i].copy_(source_head[f"{name}.bias"][j])
                kept.append(finding)
    return tuple(kept)


def create_model(
    init: str,
    num_classes: int,
    image_size: int | None = None,
    *,
    keep_head_for: Sequence[str] | None = None,
    seed: int = 0,
    **timm_kwargs: Any,
) -> tuple[nn.Module, ModelInfo]:
    """Build the backbone named by ``init`` with a new head of ``num_classes`` outputs.

    ``image_size`` (pixels, square) defaults to the init's pretraining resolution; ViT position
    embeddings are resampled to it by timm's checkpoint filter at load time (it must be a multiple of
    the patch size). Pretrained weights are read from disk only (imported copy, then HF cache); when
    they are missing the InputError names the files and the commands that fetch or import them.
    The backbone is loaded strictly (every parameter must come from the file); the head is always new
    (truncated normal std 0.02, zero bias), drawn from ``seed`` without touching the global RNG.

    ``keep_head_for`` (``checkpoint:`` inits with findings in their json only) lists the target
    findings in output order (length ``num_classes``); rows of findings the source also predicts are
    copied from the source head, the others stay new. Extra ``timm_kwargs`` (e.g. ``drop_path_rate``)
    go to ``timm.create_model``. ``num_classes``: outputs of the head (one logit per finding);
    ``seed``: the head's initialization.

    Returns:
        ``(model, info)``: the ``torch.nn.Module`` on CPU in float32, train mode, and a frozen
        :class:`ModelInfo` (``arch``, ``mean``, ``std``, ``image_size`` px, ``patch_size``,
        ``weights``, ``num_params``, ...; ``info.to_dict()``).

    Example::

        model, info = cxrbench.create_model("random-vit-test", num_classes=4, image_size=64, seed=0)
        info.mean, info.std, info.image_size          # what the loader normalizes with
    """
    import torch

    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise InputError(
            f"num_classes must be a non-negative integer, got {num_classes!r}",
            where="create_model",
            fix="pass the number of findings",
        )
    bad = sorted(_RESERVED_KWARGS & set(timm_kwargs))
    if bad:
        raise InputError(
            f"option(s) {', '.join(bad)} are set by cxrbench",
            where="create_model",
            fix="use the num_classes/image_size arguments and the init name instead",
        )
    r = resolve_init(init)
    where = f"init {r.init}"
    if image_size is not None and (
        not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8
    ):
        raise InputError(
            f"image size must be an integer of at least 8 pixels, got {image_size!r}",
            where=where,
            fix="e.g. --image-size 224",
        )
    size = int(image_size or r.image_size)
    _check_size(size, r.patch_size, r.init)
    if keep_head_for is not None:
        keep_head_for = _check_keep(r, keep_head_for, num_classes)
    kwargs = {**r.timm_kwargs, **timm_kwargs}
    if r.fixed_input_size:
        kwargs["img_size"] = size

    location: store.WeightLocation | None = None
    kept: tuple[str, ...] = ()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))  # CPU generator only; restored on exit
        if r.tiny or r.vlm_folder:  # a vision-language tower converted here (tiny test model, local folder)
            model = _load_converted(r, num_classes, kwargs, seed)
            if r.vlm_folder:
                location = store.WeightLocation(path=r.checkpoint, origin="local-dir")  # type: ignore[arg-type]
        elif not r.pretrained:
            model = timm_create(r.arch, r.init, pretrained=False, num_classes=num_classes, **kwargs)
        else:
            if r.kind == "checkpoint":
                location = store.WeightLocation(path=r.checkpoint, origin="checkpoint")  # type: ignore[arg-type]
            else:
                location = store.require(r.source, r.init)  # type: ignore[arg-type]
            model, kept = _load_pretrained(r, location.path, num_classes, keep_head_for, kwargs)
    model.train()

    patch = r.patch_size or _model_patch(model)
    if r.fixed_input_size:
        _check_size(size, patch, r.init)
    info = ModelInfo(
        init=r.init,
        arch=r.arch,
        mean=r.mean,
        std=r.std,
        image_size=size,
        patch_size=patch,
        num_classes=num_classes,
        family=r.family,
        pretrained=r.pretrained,
        weights=str(location.path) if location else None,
        weights_origin=location.origin if location else None,
        weights_revision=location.revision if location else None,
        model_kwargs={k: v for k, v in kwargs.items() if k != "img_size"},
        license=r.license,
        head_rows_kept=kept,
        source=r.meta,
        num_params=sum(p.numel() for p in model.parameters()),
    )
    return model, info


def _check_keep(r: ResolvedInit, keep: Sequence[str], num_classes: int) -> list[str]:
    where = f"init {r.init}"
    if r.kind != "checkpoint" or not r.meta or not r.meta.get("findings"):
        raise InputError(
            "keeping head rows needs a cxrbench checkpoint whose json lists its findings",
            where=where,
            fix="use --init checkpoint:RUN/best.safetensors (with best.json beside it), "
            "or do not ask to keep the head",
        )
    keep = [str(f) for f in keep]
    if len(keep) != num_classes or len(set(keep)) != len(keep):
        raise InputError(
            f"keep_head_for must list {num_classes} distinct findings (one per output), got {len(keep)}",
            where=where,
            fix="pass the target findings in output order",
        )
    return keep


def _model_patch(model: nn.Module) -> int | None:
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return None
    return int(patch[0] if isinstance(patch, tuple | list) else patch)


def _load_pretrained(
    r: ResolvedInit, path: Path, num_classes: int, keep: list[str] | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, tuple[str, ...]]:
    """Build with the file's own head size, load strictly through timm's filter, then put on a new head."""
    from timm.models import get_pretrained_cfg

    cfg = {**cfg_fields(get_pretrained_cfg(r.arch)), **r.cfg_overlay}
    classifier = cfg.get("classifier") or "head"
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    with safeload.as_safetensors(path) as st:
        shapes = safeload.tensor_shapes(st)
        n_src = _head_rows(shapes, classifier)
        # file= makes timm read this file and nothing else (no hub, no url); num_classes equal to the
        # file's head keeps timm's load strict, so no backbone parameter can stay silently random.
        overlay = {
            **r.cfg_overlay,
            "file": str(st),
            "custom_load": False,
            "num_classes": n_src,
            "label_offset": 0,
            "hf_hub_id": None,
            "url": None,
        }
        model = timm_create(
            r.arch, r.init, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=n_src, **kwargs
        )
        head_keys = [f"{c}.{p}" for c in classifier for p in ("weight", "bias") if f"{c}.{p}" in shapes]
        source_head = safeload.read_tensors(st, head_keys) if keep else {}
    timm_model: Any = model
    timm_model.pretrained_cfg = {**timm_model.pretrained_cfg, "file": str(path)}
    timm_model.default_cfg = timm_model.pretrained_cfg
    _new_head(model, num_classes)
    kept: tuple[str, ...] = ()
    if keep:
        if len(classifier) != 1 or not source_head:
            raise InputError(
                "the source checkpoint has no single linear head to keep rows from",
                where=str(path),
                fix="do not ask to keep the head",
            )
        src_findings = r.meta.get("findings") if r.meta else None
        if src_findings is not None and len(src_findings) != n_src:
            raise InputError(
                f"best.json lists {len(src_findings)} findings but the head has {n_src} rows",
                where=str(path),
                fix="the checkpoint and its json do not belong together",
            )
        kept = _keep_rows(model, source_head, src_findings or [], keep)
    return model, kept


def _load_converted(r: ResolvedInit, num_classes: int, kwargs: dict[str, Any], seed: int) -> nn.Module:
    """The image tower of a tiny test vision-language model (drawn from ``seed``) or of a library folder,
    converted to timm in memory and loaded strictly, with a new head."""
    from cxrbench.models import vlm_convert
    from cxrbench.models.vlm_folder import read_folder, tiny_plan

    if r.tiny:
        from cxrbench.models.vlm_tiny import build_tiny

        plan, state = tiny_plan(r.tiny), build_tiny(r.tiny, seed).model.state_dict()
    else:
        lib = read_folder(r.vlm_folder, r.init)  # type: ignore[arg-type]
        plan, state = lib.plan(), safeload.load_state_dict(lib.weights)
    model = timm_create(r.arch, r.init, pretrained=False, num_classes=plan.head_rows, **kwargs)
    vlm_convert.to_timm(plan, state, model, f"init {r.init}")  # loads the converted weights, strictly
    _new_head(model, num_classes)
    return model


def check_weights_file(init: str, path: str | os.PathLike) -> None:
    """Raise InputError unless ``path`` loads strictly into the architecture of ``init`` (import check)."""
    r = resolve_init(init)
    if r.kind not in ("registered", "timm"):
        raise InputError(
            f"{init!r} takes no imported weights",
            where=f"init {init}",
            fix="import weights for a registered init or a timm:<model.tag> name",
        )
    import torch

    kwargs = {**r.timm_kwargs}
    if r.fixed_input_size:
        kwargs["img_size"] = r.image_size
    with torch.random.fork_rng(devices=[]):
        _load_pretrained(r, Path(path), 0, None, kwargs)

