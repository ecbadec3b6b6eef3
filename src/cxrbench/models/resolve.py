"""The one parser of init names, and resolving a name to an architecture and a weight location.

An *init* names where a backbone's weights come from (``--init``):

- a registered name (:data:`cxrbench.models.registry.INITS`): ``dinov2-vit{s,b,l,g}14[-reg]``,
  ``imagenet21k-vitb16``, ``imagenet1k-vitb16``, ``dinov3-vit{s,b,l}16``, ``dinov3-convnext-{t,s,b}``;
- ``random-<arch>``: no pretrained weights (the control arm); ``<arch>`` is a timm architecture,
  a registered name (same architecture, resolution and normalization as that init) or an alias
  from :data:`~cxrbench.models.registry.RANDOM_ALIASES` (``random-vit-tiny``, ``random-vit-test``);
- ``timm:<model>[.tag]``: any timm pretrained tag, normalization from timm's ``pretrained_cfg``;
- ``hf-hub:<org>/<repo>``: a timm-format hub repository (``config.json`` + weights);
- ``checkpoint:<path>`` (or timm's spelling ``local-dir:<path>``): a cxrbench ``best.safetensors``
  with ``best.json`` beside it, or any timm-compatible state dict with a ``config.json`` beside it;
  a folder holding an open_clip or transformers SigLIP model is a vision-language init, its image tower
  converted to timm when built (:mod:`cxrbench.models.vlm_folder`);
- ``random-clip-test`` / ``random-siglip-test``: tiny vision-language models drawn from the seed
  (:mod:`cxrbench.models.vlm_tiny`).

:func:`parse_init` tells the form from the spelling alone (no timm import, no file access);
:func:`resolve_init` resolves it fully without touching weights. Everything that needs to know
"is this a checkpoint, and which file" asks one of them.
"""


from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_json
from cxrbench.common.layout import RUN_BEST_WEIGHTS
from cxrbench.models import store as wt
from cxrbench.models.arch import cfg_fields
from cxrbench.models.convert import converted_record
from cxrbench.models.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INITS,
    RANDOM_ALIASES,
    InitSpec,
    _unknown_init,
)
from cxrbench.models.safeload import SAFETENSORS_NAME
from cxrbench.models.vlm_convert import VLM_FORMATS, TowerPlan
from cxrbench.models.vlm_folder import folder_format, read_folder, tiny_plan
from cxrbench.models.vlm_tiny import TINY_VLMS

PREFIXES: tuple[str, ...] = ("timm:", "checkpoint:", "random-", "hf-hub:")
CHECKPOINT_PREFIXES: tuple[str, ...] = ("checkpoint", "local-dir")  # local-dir: timm's spelling
INIT_KINDS: tuple[str, ...] = ("registered", "random", "timm", "hf-hub", "checkpoint")


@dataclass(frozen=True)
class InitName:
    """An init name taken apart by its spelling: ``kind`` (one of :data:`INIT_KINDS`) and ``value``
    (the registered name, the architecture after ``random-``, the timm model, the hub repo or the
    checkpoint path as written)."""

    text: str
    kind: str
    value: str

    @property
    def is_checkpoint(self) -> bool:
        """True for ``checkpoint:`` / ``local-dir:`` names (they load a file and need the overlap guard)."""
        return self.kind == "checkpoint"


def parse_init(init: str) -> InitName:
    """The form of an init name from its spelling alone (cheap: no timm, no files).

    Raises InputError for an empty name or an unknown ``prefix:``; whether a registered name or an
    architecture exists is left to :func:`resolve_init`.
    """
    if not isinstance(init, str) or not init.strip():
        raise InputError("no initialization given", where="init", fix="e.g. --init dinov2-vitb14")
    text = init.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in CHECKPOINT_PREFIXES:
        return InitName(text, "checkpoint", rest)
    if sep and prefix == "timm":
        return InitName(text, "timm", rest)
    if sep and prefix == "hf-hub":
        return InitName(text, "hf-hub", rest)
    if text.lower().startswith("random-"):
        return InitName(text, "random", text[len("random-"):])
    if sep and "/" not in prefix and "\\" not in prefix and len(prefix) > 1:
        raise InputError(
            f"unknown prefix {prefix + ':'!r}",
            where="init",
            fix=f"prefixes: {', '.join(PREFIXES)}; e.g. checkpoint:path/to/best.safetensors",
        )
    return InitName(text, "registered", text.lower())


@dataclass(frozen=True)
class ResolvedInit:
    """An init name resolved to an architecture and a weight location (internal to cxrbench).

    ``kind`` is ``registered``, ``random``, ``timm``, ``hf-hub`` or ``checkpoint``. ``vlm`` is the
    library format (``open-clip`` / ``hf-siglip``) of a vision-language init whose text tower can be
    loaded (:mod:`cxrbench.models.vlm`); ``tiny`` names a tiny test model built from the seed
    (``random-clip-test``), ``vlm_folder`` a library folder converted when the model is built
    (``local-dir:DIR``).
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
    vlm: str | None = None
    tiny: str | None = None
    vlm_folder: Path | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"


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


def _size_from_cfg(cfg: Mapping[str, Any]) -> int:
    input_size = cfg.get("input_size") or (3, 224, 224)
    return int(input_size[-1])


def _norm(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if values is None:
        return default
    values = tuple(float(v) for v in values)
    return (values[0], values[1], values[2]) if len(values) == 3 else (values[0],) * 3


def _from_spec(spec: InitSpec, init: str, kind: str) -> ResolvedInit:
    mean, std, size, kwargs = spec.mean, spec.std, spec.image_size, dict(spec.timm_kwargs)
    arch = spec.timm_name
    conv = converted_record(spec) if spec.convert and kind == "registered" else None
    if conv:  # a converted checkpoint: normalization, size and build options from its own configs
        mean, std = _norm(conv.get("mean"), mean), _norm(conv.get("std"), std)
        size = int(conv.get("image_size") or size)
        if spec.convert in VLM_FORMATS:  # the configs define the whole tower (architecture included)
            arch, kwargs = str(conv.get("timm_arch") or arch), {}
        kwargs.update(conv.get("timm_kwargs") or {})
    return ResolvedInit(
        init=init,
        kind=kind,
        arch=arch,
        family=spec.family if kind != "random" else "random",
        mean=mean,
        std=std,
        image_size=size,
        patch_size=int(kwargs.get("patch_size", spec.patch_size)) if spec.patch_size else None,
        fixed_input_size=spec.fixed_input_size,
        timm_kwargs=kwargs,
        license=spec.license if kind != "random" else None,
        spec=spec,
        source=spec.weight_source if kind != "random" else None,
        vlm=spec.convert if spec.convert in VLM_FORMATS and kind != "random" else None,
    )


def _from_timm(name: str, init: str, kind: str) -> ResolvedInit:
    where = f"init {init}"
    cfg = cfg_fields(_timm_cfg(name, where))
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
    base = cfg_fields(_timm_cfg(arch, f"init {init}"))
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


_CHECKPOINT_FILES = (RUN_BEST_WEIGHTS, SAFETENSORS_NAME, "pytorch_model.bin")


def _from_plan(init: str, kind: str, plan: TowerPlan, **extra: Any) -> ResolvedInit:
    """A vision-language image tower (tiny test model or library folder) as a timm architecture."""
    return ResolvedInit(init=init, kind=kind, arch=plan.arch, family=extra.pop("family", plan.family),
                        mean=plan.mean, std=plan.std, image_size=plan.image_size, patch_size=plan.patch_size,
                        fixed_input_size=True, timm_kwargs=dict(plan.kwargs), vlm=plan.family, **extra)


def _from_checkpoint(init: str, path_text: str) -> ResolvedInit:
    where = f"init {init}"
    if not path_text:
        raise InputError(
            "checkpoint: needs a path", where=where, fix="e.g. checkpoint:runs/mimic/best.safetensors"
        )
    folder = Path(path_text).expanduser()
    if folder_format(folder):  # an open_clip / transformers SigLIP folder: converted when built
        lib = read_folder(folder, init)
        return _from_plan(init, "checkpoint", lib.plan(), checkpoint=lib.weights, vlm_folder=folder)
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
    name = parse_init(init)
    init, rest = name.text, name.value
    if name.kind == "checkpoint":
        return _from_checkpoint(init, rest)
    if name.kind == "timm":
        if not rest:
            raise InputError(
                "timm: needs a model name", where="init", fix="e.g. timm:vit_base_patch16_224.augreg_in21k"
            )
        return _from_timm(rest, init, "timm")
    if name.kind == "hf-hub":
        return _from_hf_hub(init, rest)
    if name.kind == "registered" and rest in INITS:
        return _from_spec(INITS[rest], rest, "registered")
    if name.kind == "random":
        arch = rest
        if arch.lower() in INITS:
            return _from_spec(INITS[arch.lower()], init, "random")
        if arch in TINY_VLMS:  # a tiny vision-language model: both towers built from the seed
            return _from_plan(init, "random", tiny_plan(arch), family="random", tiny=arch)
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
    name = parse_init(init)
    if name.kind == "hf-hub":
        repo = name.value
        return wt.WeightSource(
            key=repo.replace("/", "--"), hf_repo=repo, extra_files=("config.json",), importable=False
        )
    resolved = resolve_init(init)
    return resolved.source if resolved.kind in ("registered", "timm") else None

