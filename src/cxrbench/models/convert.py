"""Converting Hugging Face transformers Dinov2 checkpoints to timm, on ``weights fetch`` / ``import``.

RAD-DINO (``microsoft/rad-dino``, ``Dinov2Model``) and CXformer (``m42-health/CXformer-*``,
``Dinov2WithRegistersModel``) are published in transformers' format: ``model.safetensors`` with
``embeddings.* / encoder.layer.N.* / layernorm.*`` keys, ``config.json`` (architecture) and
``preprocessor_config.json`` (normalization, input size). :func:`convert_hf_dinov2` maps them onto
timm's ``VisionTransformer`` (the DINOv2 models ``vit_*_patch14[_reg4]_dinov2``):

- ``query``/``key``/``value`` of each block are concatenated into ``attn.qkv``; ``layer_scale*.lambda1``
  become ``ls*.gamma``; ``layernorm`` becomes ``norm``; the mask token (pretraining only) is dropped;
- with registers, timm adds no position embedding to the class token (``no_embed_class``), so the
  class token's own position embedding is folded into it, as timm's converter of Meta's checkpoints
  does; the register tokens become ``reg_token``;
- the timm build options (width, depth, heads, MLP ratio, registers, image size) come from
  ``config.json``; normalization and input size from ``preprocessor_config.json``.

The result (timm keys, safetensors) is verified by a strict load into the built model and put into
cxrbench's store with a ``weights.json`` that records what the conversion read; ``create_model``
then finds it like any imported weights, and the init's normalization, size and build options are
taken from that record. Features are equal to the transformers model's at the checkpoint's own
input size (elsewhere both resample the position embeddings, each its own way).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256, read_json
from cxrbench.models import store as wt
from cxrbench.models.safeload import SAFETENSORS_NAME

HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
_PREFIXES = ("dinov2_with_registers.", "dinov2.", "model.")  # wrappers (ForImageClassification, ...)
_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_RENAMED = {
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
}
_BLOCK_KEYS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}


def timm_kwargs_from_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """timm ``VisionTransformer`` build options equivalent to a transformers Dinov2 ``config.json``."""
    kind = config.get("model_type")
    if kind not in _MODEL_TYPES:
        raise InputError(
            f"model_type {kind!r} is not a transformers Dinov2 model",
            where=where,
            fix=f"only {', '.join(_MODEL_TYPES)} checkpoints can be converted",
        )
    if config.get("use_swiglu_ffn"):
        raise InputError(
            "SwiGLU feed-forward layers (DINOv2 giant) are not converted",
            where=where,
            fix="use the timm/Meta checkpoint of that model instead",
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise InputError(
            f"activation {config.get('hidden_act')!r} is not timm's GELU",
            where=where,
            fix="only GELU Dinov2 checkpoints can be converted",
        )
    if abs(float(config.get("layer_norm_eps", 1e-6)) - 1e-6) > 1e-12:
        raise InputError(
            f"layer_norm_eps {config.get('layer_norm_eps')} is not timm's 1e-6",
            where=where,
            fix="only standard Dinov2 checkpoints can be converted",
        )
    hidden = int(config["hidden_size"])
    kwargs: dict[str, Any] = {
        "patch_size": int(config["patch_size"]),
        "embed_dim": hidden,
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "mlp_ratio": float(config.get("mlp_ratio", 4)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "init_values": float(config.get("layerscale_value", 1.0)),
    }
    registers = int(config.get("num_register_tokens", 0) or 0) if kind == "dinov2_with_registers" else 0
    if registers:
        kwargs.update(reg_tokens=registers, no_embed_class=True)
    else:
        kwargs.update(reg_tokens=0, no_embed_class=False)
    return kwargs


def preprocessing_from_config(pre: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``mean``, ``std`` and ``image_size`` of a ``preprocessor_config.json`` (the crop size when it
    center-crops, else the resize size), falling back to ``config.json``'s ``image_size``."""

    def size_of(value: Any) -> int | None:
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for key in ("height", "shortest_edge", "width"):
                if isinstance(value.get(key), int):
                    return int(value[key])
        return None

    size = size_of(pre.get("crop_size")) if pre.get("do_center_crop") else None
    size = size or size_of(pre.get("size")) or int(config.get("image_size", 518))
    mean = [float(v) for v in pre.get("image_mean", (0.485, 0.456, 0.406))]
    std = [float(v) for v in pre.get("image_std", (0.229, 0.224, 0.225))]
    if len(mean) == 1:
        mean, std = mean * 3, std * 3
    return {
        "mean": mean,
        "std": std,
        "image_size": int(size),
        "rescale_factor": pre.get("rescale_factor"),
        "do_normalize": pre.get("do_normalize", True),
    }


def convert_hf_dinov2(state: dict, config: dict[str, Any], where: str = "weights") -> dict:
    """A transformers Dinov2/Dinov2WithRegisters state dict -> timm ``VisionTransformer`` keys."""
    import torch

    sd = {}
    for k, v in state.items():
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p) :]
                break
        sd[k] = v
    if "embeddings.cls_token" not in sd:
        raise InputError(
            "no 'embeddings.cls_token': not a transformers Dinov2 checkpoint",
            where=where,
            fix="give the model.safetensors of a Dinov2Model / Dinov2WithRegistersModel",
        )
    out: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": sd.pop("layernorm.weight"),
        "norm.bias": sd.pop("layernorm.bias"),
    }
    cls, pos = sd.pop("embeddings.cls_token"), sd.pop("embeddings.position_embeddings")
    sd.pop("embeddings.mask_token", None)
    registers = sd.pop("embeddings.register_tokens", None)
    if registers is not None and registers.shape[1] > 0:
        out["cls_token"] = cls + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        out["reg_token"] = registers
    else:
        out["cls_token"], out["pos_embed"] = cls, pos
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for k in list(sd):
        m = _BLOCK.match(k)
        if m:
            name = m.group(2)
            for new, old in _RENAMED.items():  # transformers 5's in-memory names, if saved that way
                name = name.replace(new, old)
            blocks.setdefault(int(m.group(1)), {})[name] = sd.pop(k)
    for i, b in sorted(blocks.items()):
        pre = f"blocks.{i}."
        attn = "attention.attention."
        try:
            out[pre + "attn.qkv.weight"] = torch.cat(
                [b.pop(attn + f"{n}.weight") for n in ("query", "key", "value")]
            )
            if attn + "query.bias" in b:
                out[pre + "attn.qkv.bias"] = torch.cat(
                    [b.pop(attn + f"{n}.bias") for n in ("query", "key", "value")]
                )
            for src, dst in _BLOCK_KEYS.items():
                out[pre + dst] = b.pop(src)
        except KeyError as e:
            raise InputError(
                f"block {i} lacks {e.args[0]!r}",
                where=where,
                fix="the file is not a complete Dinov2 checkpoint",
            ) from None
        if b:
            raise InputError(
                f"block {i} has keys timm's ViT has no place for: {sorted(b)[:4]}",
                where=where,
                fix="only standard Dinov2 blocks (MLP feed-forward, layer scale) are converted",
            )
    leftover = [k for k in sd if not k.startswith(("classifier.", "pooler."))]
    if leftover:
        raise InputError(
            f"keys that are not converted: {leftover[:4]}",
            where=where,
            fix="only the Dinov2 backbone is converted",
        )
    if int(config.get("num_hidden_layers", len(blocks))) != len(blocks):
        raise InputError(
            f"config.json says {config.get('num_hidden_layers')} layers, the file has {len(blocks)}",
            where=where,
            fix="the config and the weights do not belong together",
        )
    return out


def _source_files(folder_or_file: Path, init: str) -> tuple[Path, Path, Path]:
    """(weights, config.json, preprocessor_config.json) of a repository copy."""
    folder = folder_or_file if folder_or_file.is_dir() else folder_or_file.parent
    weights = wt.weight_file(
        folder_or_file,
        (SAFETENSORS_NAME, "pytorch_model.bin"),
        fix="point to the repository folder holding model.safetensors",
    )
    files = []
    for name in (HF_CONFIG, HF_PREPROCESSOR):
        p = folder / name
        if not p.is_file():
            raise InputError(
                f"{name} is missing beside the weights",
                where=str(folder),
                fix=f"copy the whole repository folder of {init} (its {HF_CONFIG} and "
                f"{HF_PREPROCESSOR} give the architecture and the normalization)",
            )
        files.append(p)
    return weights, files[0], files[1]


def import_converted(spec, source: str | os.PathLike, force: bool = False) -> wt.WeightLocation:
    """Convert a transformers copy of ``spec``'s repository (folder, or its ``model.safetensors`` with
    the configs beside it) into cxrbench's store, after a strict load into the timm model."""
    import torch

    from cxrbench.models import safeload
    from cxrbench.models.arch import timm_create
    from cxrbench.models.vlm_convert import VLM_FORMATS

    if spec.convert in VLM_FORMATS:  # open_clip / transformers SigLIP: image tower + text tower
        from cxrbench.models.vlm_store import import_vlm

        return import_vlm(spec, source, force=force)
    if spec.convert != "hf-dinov2":
        raise InputError(
            f"{spec.name!r} needs no conversion",
            where=f"init {spec.name}",
            fix=f"use `cxrbench weights import {spec.name} FILE`",
        )
    src = Path(source).expanduser()
    weights, config_path, pre_path = _source_files(src, spec.name)
    config, pre = read_json(config_path), read_json(pre_path)
    where = str(weights)
    kwargs = timm_kwargs_from_config(config, str(config_path))
    preprocessing = preprocessing_from_config(pre, config)
    kwargs["img_size"] = int(config.get("image_size", preprocessing["image_size"]))
    converted = convert_hf_dinov2(safeload.load_state_dict(weights), config, where)
    source_ws = spec.weight_source
    dest_dir = wt.imported_dir(source_ws.key)
    dest = dest_dir / SAFETENSORS_NAME
    if dest.exists() and not force:
        raise InputError(
            f"weights for {spec.name} were already converted",
            where=str(dest),
            fix="add --force to replace them",
        )
    with torch.random.fork_rng(devices=[]):
        model = timm_create(spec.timm_name, spec.name, pretrained=False, num_classes=0, **kwargs)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise InputError(
            f"the converted weights do not fit {spec.timm_name} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})",
            where=where,
            fix="check that the file is this model's",
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    staged = dest_dir / f".staged-{os.getpid()}.safetensors"
    try:
        safeload.save_state_dict(
            converted,
            staged,
            metadata={"cxrbench_source": weights.name, "cxrbench_converted_from": "hf-dinov2"},
        )
        build_kwargs = {k: v for k, v in kwargs.items() if k != "img_size"}
        record = {
            "key": source_ws.key,
            "init": spec.name,
            "hf_repo": spec.hf_repo,
            "source_file": str(weights.resolve()),
            "source_sha256": file_sha256(weights),
            "source_format": "hf-dinov2",
            "converted_to_safetensors": True,
            "sha256": file_sha256(staged),
            "converted": {
                "from": config.get("model_type"),
                "timm_arch": spec.timm_name,
                "timm_kwargs": build_kwargs,
                "mean": preprocessing["mean"],
                "std": preprocessing["std"],
                "image_size": preprocessing["image_size"],
                "config_image_size": kwargs["img_size"],
                "preprocessor": {
                    k: pre.get(k)
                    for k in (
                        "image_processor_type",
                        "do_resize",
                        "size",
                        "do_center_crop",
                        "crop_size",
                        "resample",
                    )
                },
            },
        }
        from cxrbench import __version__
        from cxrbench.common.provenance import now_iso

        record.update(imported=now_iso(), cxrbench=__version__)
        atomic_write_json(dest_dir / wt.IMPORT_RECORD, record)
        os.replace(staged, dest)  # last: its presence means the conversion is complete
    finally:
        if staged.exists():
            staged.unlink()
    return wt.WeightLocation(path=dest, origin="imported")


def fetch_converted(spec, force: bool = False) -> wt.WeightLocation:
    """``weights fetch`` for a converted init: the repository files from the hub cache (downloaded
    when missing), then :func:`import_converted` (always redone, so a new revision is picked up)."""
    from cxrbench.models.vlm_convert import VLM_FORMATS

    if spec.convert in VLM_FORMATS:
        from cxrbench.models.vlm_store import fetch_vlm

        return fetch_vlm(spec, force=force)
    source = spec.weight_source
    found = None if force else wt.locate_hub(source)
    if found is None:
        found = wt.fetch(source, spec.name, force=force)
    return import_converted(spec, found.path.parent, force=True)


def converted_record(spec) -> dict[str, Any] | None:
    """What the conversion of ``spec`` recorded (its ``converted`` section), or None before it ran."""
    rec = wt.import_record(spec.weight_source.key) if spec.convert else None
    conv = rec.get("converted") if isinstance(rec, dict) else None
    return conv if isinstance(conv, dict) else None
