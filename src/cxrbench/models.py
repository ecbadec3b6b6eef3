"""The initialization registry on top of timm, and :func:`create_model`.

An *init* names where a backbone's weights come from (``--init``):

- a registered name (:data:`INITS`): ``dinov2-vit{s,b,l,g}14[-reg]``, ``imagenet21k-vitb16``,
  ``imagenet1k-vitb16``, ``dinov3-vit{s,b,l}16``, ``dinov3-convnext-{t,s,b}``;
- ``random-<arch>``: no pretrained weights (the control arm); ``<arch>`` is a timm architecture,
  a registered name (same architecture, resolution and normalization as that init) or an alias
  from :data:`RANDOM_ALIASES` (``random-vit-tiny``, ``random-vit-test``, ...);
- ``timm:<model>[.tag]``: any timm pretrained tag, normalization from timm's ``pretrained_cfg``;
- ``hf-hub:<org>/<repo>``: a timm-format hub repository (``config.json`` + weights);
- ``checkpoint:<path>``: a cxrbench ``best.safetensors`` with ``best.json`` beside it, or any
  timm-compatible state dict with a ``config.json`` (timm/hub folder layout) beside it.

Weights are read only from disk (see :mod:`cxrbench.weights`); a missing file is an error naming the
files and the commands that get them, never a silent download or a silent random init.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench import weights as wt
from cxrbench.errors import InputError
from cxrbench.fileio import read_json

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INCEPTION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INCEPTION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

PREFIXES: tuple[str, ...] = ("timm:", "checkpoint:", "random-", "hf-hub:")
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

_DINOV2_PAPER = (
    "Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024, arXiv:2304.07193"
)
_REG_PAPER = "Darcet et al., Vision Transformers Need Registers, ICLR 2024, arXiv:2309.16588"
_AUGREG_PAPER = (
    "Steiner et al., How to train your ViT? Data, Augmentation, and Regularization in Vision "
    "Transformers, TMLR 2022, arXiv:2106.10270"
)
_DINOV3_PAPER = "Simeoni et al., DINOv3, arXiv:2508.10104 (2025)"


@dataclass(frozen=True)
class InitSpec:
    """One registered initialization (timm ``pretrained_cfg`` style; frozen).

    ``image_size`` is the pretraining resolution in pixels (the default when ``create_model`` gets
    no ``image_size``); ``patch_size`` is None for convolutional networks; ``timm_kwargs`` are the
    build options the init needs (e.g. DINOv3 ViTs pool the CLS token as upstream); ``files`` are the
    weight files of ``hf_repo``, preferred first.
    """

    name: str
    timm_name: str
    family: str
    architecture: str
    patch_size: int | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    license: str
    paper: str
    hf_repo: str
    files: tuple[str, ...] = wt.HF_WEIGHT_FILES
    timm_kwargs: tuple[tuple[str, Any], ...] = ()
    fixed_input_size: bool = True
    url: str | None = None
    notes: str = ""

    @property
    def arch(self) -> str:
        """The timm architecture without the tag."""
        return self.timm_name.split(".", 1)[0]

    @property
    def pooling(self) -> str:
        """The pooling the model uses (an override from ``timm_kwargs`` or the architecture's default)."""
        return dict(self.timm_kwargs).get("global_pool", "token" if self.patch_size else "avg")

    @property
    def weight_source(self) -> wt.WeightSource:
        """Where its weights come from (see :mod:`cxrbench.weights`)."""
        return wt.WeightSource(key=self.timm_name, hf_repo=self.hf_repo, files=self.files, url=self.url)


def _dinov2(letter: str, size: str, width: str, reg: bool) -> InitSpec:
    timm_name = f"vit_{size}_patch14{'_reg4' if reg else ''}_dinov2.lvd142m"
    return InitSpec(
        name=f"dinov2-vit{letter}14{'-reg' if reg else ''}",
        timm_name=timm_name,
        family="dinov2",
        architecture=f"ViT-{letter.upper() if letter != 'g' else 'g'}/14{' +4 registers' if reg else ''}",
        patch_size=14,
        image_size=518,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="apache-2.0",
        paper=_DINOV2_PAPER + ("; " + _REG_PAPER if reg else ""),
        hf_repo=f"timm/{timm_name}",
        url=f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{letter}14/dinov2_vit{letter}14"
        f"{'_reg4' if reg else ''}_pretrain.pth",
        notes=f"self-supervised on LVD-142M (142M curated natural images); {width}",
    )


def _dinov3_vit(letter: str, size: str, width: str) -> InitSpec:
    timm_name = f"vit_{size}_patch16_dinov3.lvd1689m"
    return InitSpec(
        name=f"dinov3-vit{letter}16",
        timm_name=timm_name,
        family="dinov3",
        architecture=f"ViT-{letter.upper()}/16",
        patch_size=16,
        image_size=256,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="dinov3-license",
        paper=_DINOV3_PAPER,
        hf_repo=f"timm/{timm_name}",
        timm_kwargs=(("global_pool", "token"),),
        notes=f"distilled from DINOv3 7B on LVD-1689M; RoPE + 4 registers; CLS pooling as upstream; {width}",
    )


def _dinov3_convnext(letter: str, size: str) -> InitSpec:
    timm_name = f"convnext_{size}.dinov3_lvd1689m"
    return InitSpec(
        name=f"dinov3-convnext-{letter}",
        timm_name=timm_name,
        family="dinov3",
        architecture=f"ConvNeXt-{letter.upper()}",
        patch_size=None,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        license="dinov3-license",
        paper=_DINOV3_PAPER,
        hf_repo=f"timm/{timm_name}",
        fixed_input_size=False,
        notes="distilled from DINOv3 7B on LVD-1689M; average pooling",
    )


def _augreg(name: str, tag: str, notes: str) -> InitSpec:
    timm_name = f"vit_base_patch16_224.{tag}"
    return InitSpec(
        name=name,
        timm_name=timm_name,
        family="imagenet",
        architecture="ViT-B/16",
        patch_size=16,
        image_size=224,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        license="apache-2.0",
        paper=_AUGREG_PAPER,
        hf_repo=f"timm/{timm_name}",
        notes=notes,
    )


_SPECS: tuple[InitSpec, ...] = (
    *(
        _dinov2(letter, size, width, reg)
        for reg in (False, True)
        for letter, size, width in (
            ("s", "small", "22M params"),
            ("b", "base", "86M params"),
            ("l", "large", "304M params"),
            ("g", "giant", "1.1B params, SwiGLU"),
        )
    ),
    _augreg(
        "imagenet21k-vitb16",
        "augreg_in21k",
        "supervised on ImageNet-21k (AugReg); the reference study's ImageNet arm",
    ),
    _augreg(
        "imagenet1k-vitb16",
        "augreg_in21k_ft_in1k",
        "the same AugReg ImageNet-21k run, fine-tuned on ImageNet-1k",
    ),
    *(
        _dinov3_vit(letter, size, width)
        for letter, size, width in (
            ("s", "small", "21M params"),
            ("b", "base", "86M params"),
            ("l", "large", "300M params"),
        )
    ),
    *(_dinov3_convnext(letter, size) for letter, size in (("t", "tiny"), ("s", "small"), ("b", "base"))),
)

INITS: Mapping[str, InitSpec] = {s.name: s for s in _SPECS}
"""Every registered initialization by name."""

RANDOM_ALIASES: Mapping[str, str] = {
    "vit-tiny": "vit_tiny_patch16_224",  # ViT-Ti/16, 5.7M params
    "vit-small": "vit_small_patch16_224",  # ViT-S/16, 22M
    "vit-base": "vit_base_patch16_224",  # ViT-B/16, 86M (the study's architecture)
    "vit-test": "test_vit",  # 0.3M params, 64-d, 6 blocks, patch 16: for tests
    "convnext-test": "test_convnext",  # 0.4M params: for tests
}
"""Short names accepted after ``random-``."""


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


@dataclass(frozen=True)
class ResolvedInit:
    """An init name resolved to an architecture and a weight location (internal to cxrbench).

    ``kind`` is ``registered``, ``random``, ``timm``, ``hf-hub`` or ``checkpoint``.
    """

    init: str
    kind: str
    arch: str
    family: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    patch_size: int | None
    fixed_input_size: bool
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    license: str | None = None
    spec: InitSpec | None = None
    source: wt.WeightSource | None = None
    checkpoint: Path | None = None
    cfg_overlay: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"


# --------------------------------------------------------------------------- listing


def list_inits(pattern: str | None = None) -> list[str]:
    """Registered init names, optionally filtered by a shell wildcard (``'dinov2*'``)."""
    names = list(INITS)
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names


def get_init(name: str) -> InitSpec:
    """The registered :class:`InitSpec` called ``name`` (InputError with the closest names otherwise)."""
    spec = INITS.get(name.strip().lower())
    if spec is None:
        raise _unknown_init(name)
    return spec


def _unknown_init(name: str) -> InputError:
    import timm

    if timm.is_model(name.split(".", 1)[0]):
        return InputError(
            f"{name!r} is a timm model, not a registered initialization",
            where="init",
            fix=f"say where its weights come from: timm:{name} (timm's pretrained weights) or "
            f"random-{name.split('.', 1)[0]} (no pretrained weights)",
        )
    names = list(INITS) + [f"random-{a}" for a in RANDOM_ALIASES]
    close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
    starts = [n for n in INITS if n.startswith(name.lower())] if name else []
    if len(starts) > 1:
        what = f"initialization {name!r} is ambiguous: it could be {', '.join(starts)}"
    else:
        what = f"unknown initialization {name!r}" + (f"; closest: {', '.join(close)}" if close else "")
    return InputError(
        what,
        where="init",
        fix="use a registered name (`cxrbench weights list`) or a prefix: timm:<model>[.tag], "
        "checkpoint:<path>, random-<arch>, hf-hub:<org>/<repo>",
    )


# --------------------------------------------------------------------------- resolving names


def _timm_cfg(name: str, where: str) -> Any:
    """timm's pretrained cfg for ``name`` (with or without tag), InputError when unknown."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise InputError(
            f"timm has no model {arch!r}" + (f"; closest: {', '.join(close)}" if close else ""),
            where=where,
            fix="see `timm.list_models()` for architectures and "
            "`timm.list_pretrained()` for tags with weights",
        )
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        tags = timm.list_pretrained(f"{arch}.*")
        raise InputError(
            f"timm has no pretrained tag {name!r}",
            where=where,
            fix=f"tags of {arch}: {', '.join(tags) if tags else 'none'}",
        ) from None
    return cfg


def _cfg_fields(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})


def _size_from_cfg(cfg: Mapping[str, Any]) -> int:
    input_size = cfg.get("input_size") or (3, 224, 224)
    return int(input_size[-1])


def _norm(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    values = tuple(float(v) for v in values)
    return values if len(values) == 3 else (values[0],) * 3  # type: ignore[return-value]


def _from_spec(spec: InitSpec, init: str, kind: str) -> ResolvedInit:
    return ResolvedInit(
        init=init,
        kind=kind,
        arch=spec.timm_name,
        family=spec.family if kind != "random" else "random",
        mean=spec.mean,
        std=spec.std,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        fixed_input_size=spec.fixed_input_size,
        timm_kwargs=dict(spec.timm_kwargs),
        license=spec.license if kind != "random" else None,
        spec=spec,
        source=spec.weight_source if kind != "random" else None,
    )


def _from_timm(name: str, init: str, kind: str) -> ResolvedInit:
    where = f"init {init}"
    cfg = _cfg_fields(_timm_cfg(name, where))
    arch = name.split(".", 1)[0]
    tag = cfg.get("tag")
    full = f"{arch}.{tag}" if tag else arch
    source = None
    if kind == "timm":
        hub = cfg.get("hf_hub_id")
        if not hub and not cfg.get("url") and not cfg.get("file"):
            raise InputError(
                f"timm has no pretrained weights for {full!r}",
                where=where,
                fix=f"use `random-{arch}` for a random init, or another tag",
            )
        repo, _, revision = (hub or "").partition("@")  # timm pins revisions as 'org/name@rev'
        files = (cfg["hf_hub_filename"],) if cfg.get("hf_hub_filename") else wt.HF_WEIGHT_FILES
        source = wt.WeightSource(
            key=full, hf_repo=repo or None, files=files, url=cfg.get("url") or None, revision=revision or None
        )
    return ResolvedInit(
        init=init,
        kind=kind,
        arch=full,
        family="timm" if kind == "timm" else "random",
        mean=_norm(cfg.get("mean"), IMAGENET_MEAN),
        std=_norm(cfg.get("std"), IMAGENET_STD),
        image_size=_size_from_cfg(cfg),
        patch_size=None,
        fixed_input_size=bool(cfg.get("fixed_input_size")),
        license=cfg.get("license") if kind == "timm" else None,
        source=source,
    )


def _timm_config_json(path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(architecture, pretrained_cfg, model_args) from a timm/hub ``config.json``."""
    from timm.models import PretrainedCfg

    cfg = read_json(path)
    arch = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(arch, str):
        raise InputError(
            "no 'architecture' key: not a timm config.json",
            where=str(path),
            fix="only timm-format repositories/folders are supported (config.json with 'architecture')",
        )
    known = {f.name for f in fields(PretrainedCfg)}
    pcfg = {k: v for k, v in (cfg.get("pretrained_cfg") or {}).items() if k in known}
    for key in ("num_classes", "label_names"):
        if key in cfg:
            pcfg.setdefault(key, cfg[key])
    return arch, pcfg, dict(cfg.get("model_args") or {})


def _from_config_json(
    init: str, kind: str, config: Path, source: wt.WeightSource | None, checkpoint: Path | None
) -> ResolvedInit:
    arch, pcfg, model_args = _timm_config_json(config)
    base = _cfg_fields(_timm_cfg(arch, f"init {init}"))
    merged = {**base, **pcfg}
    overlay = {
        k: v for k, v in pcfg.items() if k not in {"url", "file", "hf_hub_id", "hf_hub_filename", "source"}
    }
    return ResolvedInit(
        init=init,
        kind=kind,
        arch=arch.split(".", 1)[0],
        family=kind,
        mean=_norm(merged.get("mean"), IMAGENET_MEAN),
        std=_norm(merged.get("std"), IMAGENET_STD),
        image_size=_size_from_cfg(merged),
        patch_size=None,
        fixed_input_size=bool(merged.get("fixed_input_size")),
        timm_kwargs=model_args,
        license=merged.get("license"),
        source=source,
        checkpoint=checkpoint,
        cfg_overlay=overlay,
    )


_CHECKPOINT_FILES = ("best.safetensors", "model.safetensors", "pytorch_model.bin")


def _from_checkpoint(init: str, path_text: str) -> ResolvedInit:
    where = f"init {init}"
    if not path_text:
        raise InputError(
            "checkpoint: needs a path", where=where, fix="e.g. checkpoint:runs/mimic/best.safetensors"
        )
    path = wt.weight_file(Path(path_text).expanduser(), _CHECKPOINT_FILES,
                          fix="point to the weight file, e.g. checkpoint:RUN/best.safetensors")
    meta_path = path.with_suffix(".json")
    config_path = path.parent / "config.json"
    if meta_path.is_file() and meta_path != config_path:
        return _from_cxrbench_meta(init, path, meta_path)
    if config_path.is_file():
        return _from_config_json(init, "checkpoint", config_path, None, path)
    raise InputError(
        f"cannot tell the architecture of {path.name}: "
        f"no {meta_path.name} (cxrbench) or config.json (timm) beside it",
        where=str(path),
        fix=f'write {meta_path.name} with {{"arch": "<timm model name>"}} beside it, or import it: '
        "`cxrbench weights import timm:<model.tag> FILE` and use --init timm:<model.tag>",
    )


def _from_cxrbench_meta(init: str, path: Path, meta_path: Path) -> ResolvedInit:
    meta = read_json(meta_path)
    where = str(meta_path)
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str):
        raise InputError(
            "no 'arch' (timm model name) in the checkpoint's metadata",
            where=where,
            fix="write the timm model name under 'arch' (cxrbench train does)",
        )
    findings = meta.get("findings")
    if findings is not None and not (
        isinstance(findings, list) and all(isinstance(f, str) for f in findings)
    ):
        raise InputError(
            "'findings' must be a list of names", where=where, fix="regenerate it with cxrbench train"
        )
    for key in ("mean", "std"):
        v = meta.get(key)
        if v is not None and not (
            isinstance(v, list) and len(v) in (1, 3) and all(isinstance(x, int | float) for x in v)
        ):
            raise InputError(
                f"{key!r} must be a list of 3 numbers", where=where, fix="regenerate it with cxrbench train"
            )
    size = meta.get("image_size")
    if size is not None and not (isinstance(size, int) and size > 0):
        raise InputError(
            "'image_size' must be a positive integer", where=where, fix="regenerate it with cxrbench train"
        )
    base = _from_timm(meta["arch"], init, "random")
    kwargs = meta.get("model_kwargs")
    if kwargs is None:  # older metadata: recover the registered init's build options
        spec = INITS.get(str(meta.get("init", "")))
        kwargs = dict(spec.timm_kwargs) if spec else {}
    if not isinstance(kwargs, dict):
        raise InputError(
            "'model_kwargs' must be a mapping", where=where, fix="regenerate it with cxrbench train"
        )
    return ResolvedInit(
        init=init,
        kind="checkpoint",
        arch=base.arch,
        family="checkpoint",
        mean=_norm(meta.get("mean"), base.mean),
        std=_norm(meta.get("std"), base.std),
        image_size=int(size or base.image_size),
        patch_size=None,
        fixed_input_size=base.fixed_input_size,
        timm_kwargs=dict(kwargs),
        license=meta.get("license"),
        checkpoint=path,
        meta=meta,
    )


def resolve_init(init: str) -> ResolvedInit:
    """Resolve an init name (any form listed in the module docstring) without touching weights."""
    if not isinstance(init, str) or not init.strip():
        raise InputError("no initialization given", where="init", fix="e.g. --init dinov2-vitb14")
    init = init.strip()
    prefix, sep, rest = init.partition(":")
    if sep and prefix in ("checkpoint", "local-dir"):
        return _from_checkpoint(init, rest)
    if sep and prefix == "timm":
        if not rest:
            raise InputError(
                "timm: needs a model name", where="init", fix="e.g. timm:vit_base_patch16_224.augreg_in21k"
            )
        return _from_timm(rest, init, "timm")
    if sep and prefix == "hf-hub":
        return _from_hf_hub(init, rest)
    lower = init.lower()
    if lower in INITS:
        return _from_spec(INITS[lower], lower, "registered")
    if lower.startswith("random-"):
        arch = init[len("random-") :]
        if arch.lower() in INITS:
            return _from_spec(INITS[arch.lower()], init, "random")
        if arch in RANDOM_ALIASES:
            return _from_timm(RANDOM_ALIASES[arch], init, "random")
        import timm

        if arch and timm.is_model(arch.split(".", 1)[0]):
            return _from_timm(arch, init, "random")
        close = difflib.get_close_matches(arch, list(RANDOM_ALIASES) + list(INITS) + timm.list_models(), n=3)
        raise InputError(
            f"random-: unknown architecture {arch!r}" + (f"; closest: {', '.join(close)}" if close else ""),
            where="init",
            fix="use a timm architecture (`timm.list_models()`), a registered init "
            f"name or one of {', '.join(RANDOM_ALIASES)}",
        )
    if sep and "/" not in prefix and "\\" not in prefix and len(prefix) > 1:
        raise InputError(
            f"unknown prefix {prefix + ':'!r}",
            where="init",
            fix=f"prefixes: {', '.join(PREFIXES)}; e.g. checkpoint:path/to/best.safetensors",
        )
    raise _unknown_init(init)


def _from_hf_hub(init: str, repo: str) -> ResolvedInit:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InputError(
            f"hf-hub: needs <org>/<repo>, got {repo!r}", where="init", fix="e.g. hf-hub:timm/resnet50.a1_in1k"
        )
    source = wt.WeightSource(
        key=repo.replace("/", "--"), hf_repo=repo, extra_files=("config.json",), importable=False
    )
    config = wt.locate_extra(source, "config.json")
    if config is None:
        raise wt.missing_weights_error(source, init)
    return _from_config_json(init, "hf-hub", config, source, None)


def weight_source(init: str) -> wt.WeightSource | None:
    """Where the weights of ``init`` come from (None for random inits and checkpoints)."""
    init = init.strip()
    if init.startswith("hf-hub:"):
        repo = init[len("hf-hub:") :]
        return wt.WeightSource(
            key=repo.replace("/", "--"), hf_repo=repo, extra_files=("config.json",), importable=False
        )
    resolved = resolve_init(init)
    return resolved.source if resolved.kind in ("registered", "timm") else None


# --------------------------------------------------------------------------- building


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

    model.reset_classifier(num_classes)
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
    head = model.get_submodule(name)
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


def _timm_create(arch: str, init: str, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(arch, **kwargs)
    except TypeError as e:
        if "unexpected keyword" in str(e) or "got an unexpected" in str(e):
            raise InputError(
                f"timm model {arch!r} does not accept an option: {e}",
                where=f"init {init}",
                fix="remove that model option",
            ) from None
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = " ".join(str(e).split())[:400]
        raise InputError(
            f"the weights do not fit {arch!r}: {first[:200]} ({detail})",
            where=f"init {init}",
            fix="check that the file belongs to this architecture (for a checkpoint: 'arch' in its json)",
        ) from None


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
    go to ``timm.create_model``. Returns ``(model, info)``; the model is on CPU in float32, train mode.
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

    location: wt.WeightLocation | None = None
    kept: tuple[str, ...] = ()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))  # CPU generator only; restored on exit
        if not r.pretrained:
            model = _timm_create(r.arch, r.init, pretrained=False, num_classes=num_classes, **kwargs)
        else:
            if r.kind == "checkpoint":
                location = wt.WeightLocation(path=r.checkpoint, origin="checkpoint")  # type: ignore[arg-type]
            else:
                location = wt.require(r.source, r.init)  # type: ignore[arg-type]
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

    cfg = {**_cfg_fields(get_pretrained_cfg(r.arch)), **r.cfg_overlay}
    classifier = cfg.get("classifier") or "head"
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    with wt.as_safetensors(path) as st:
        shapes = wt.tensor_shapes(st)
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
        model = _timm_create(
            r.arch, r.init, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=n_src, **kwargs
        )
        head_keys = [f"{c}.{p}" for c in classifier for p in ("weight", "bias") if f"{c}.{p}" in shapes]
        source_head = wt.read_tensors(st, head_keys) if keep else {}
    model.pretrained_cfg = {**model.pretrained_cfg, "file": str(path)}
    model.default_cfg = model.pretrained_cfg
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
