"""Vision-language image towers as timm models: reading the libraries' configs and converting weights.

Two published formats are read:

- **open_clip** (``open-clip``): ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and
  ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` (OpenAI CLIP, LAION CLIP,
  BiomedCLIP ...). open_clip's own ViT (``visual.conv1``, ``visual.transformer.resblocks``...) becomes
  timm's CLIP ViT (``vit_base_patch16_clip_224``: pre-norm, LayerNorm eps 1e-5, QuickGELU when the
  config says so); a timm trunk (``visual.trunk.*``, BiomedCLIP's ``vit_base_patch16_224``) stays that
  timm model. The keys are mapped by timm's own ``checkpoint_filter_fn`` (the converter timm uses for
  its ``.openai``/``.laion2b`` CLIP weights); the image projection (``visual.proj`` /
  ``visual.head.proj``) becomes the timm head, so ``timm.create_model(arch, num_classes=embed_dim)``
  with these weights gives the joint-space embedding.
- **transformers SigLIP** (``hf-siglip``): ``config.json`` with ``model_type`` ``siglip`` (SigLIP,
  SigLIP 2 at fixed resolution, MedSigLIP), ``preprocessor_config.json`` and ``model.safetensors``.
  The vision model becomes timm's SigLIP ViT (``vit_base_patch16_siglip_224``: no class token,
  attention-pooling head ``attn_pool`` = transformers' ``head``); ``q/k/v_proj`` are concatenated into
  ``qkv`` and the pooling head's ``in_proj`` split into ``q`` and ``kv``. SigLIP has no image projection:
  the pooled features are the joint-space embedding.

Architecture options (width, depth, heads, MLP ratio, activation, pooling) come from the configs, and
normalization and input size from ``preprocess_cfg`` / ``preprocessor_config.json``. What cannot be
expressed exactly as a timm model (ResNet CLIP towers, attentional poolers, MLP projections, SigLIP 2
NaFlex) is refused by name. :mod:`cxrbench.models.vlm_folder` reads the folders,
:mod:`cxrbench.models.vlm_store` puts the converted tower in cxrbench's store, :mod:`cxrbench.models.vlm`
loads the text towers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, cast

from cxrbench.common.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

VLM_FORMATS: tuple[str, ...] = ("open-clip", "hf-siglip")
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS: tuple[str, ...] = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG = "config.json"
HF_PREPROCESSOR = "preprocessor_config.json"
HF_WEIGHTS: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
SIGLIP_TYPES: tuple[str, ...] = ("siglip",)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_ACTIVATIONS = {
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
}
_UNSUPPORTED_VISION = (
    "attentional_pool",
    "no_ln_pre",
    "final_ln_after_pool",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
    "act_kwargs",
    "norm_kwargs",
)


@dataclass(frozen=True)
class TowerPlan:
    """What an image tower becomes in timm: ``arch`` built with ``kwargs`` (no ``img_size``) at
    ``image_size``; ``head_rows`` is the joint-space width when the image projection is kept as the
    timm head (0: the pooled features are already the joint-space embedding, as in SigLIP);
    ``embed_dim`` is the joint-space width; ``mean``/``std`` the normalization of inputs in [0, 1]."""

    family: str
    arch: str
    kwargs: dict[str, Any]
    image_size: int
    patch_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_rows: int
    embed_dim: int
    text: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _three(values: Any, default: tuple[float, float, float], where: str) -> tuple[float, float, float]:
    if values is None:
        return default
    try:
        vals = [float(v) for v in (values if isinstance(values, list | tuple) else [values])]
    except (TypeError, ValueError):
        raise InputError(
            f"mean/std must be numbers, got {values!r}", where=where, fix="fix the preprocessing config"
        ) from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise InputError(
            f"mean/std need 1 or 3 values, got {len(vals)}", where=where, fix="fix the preprocessing config"
        )
    return (vals[0], vals[1], vals[2])


def _size(value: Any) -> int:
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise InputError(
                f"non-square image size {value}", where="config", fix="only square inputs are supported"
            )
        value = value[0]
    return int(value)


def _mlp_ratio(hidden: int, intermediate: int) -> float:
    """timm builds ``int(hidden * ratio)`` MLP units: a ratio that gives exactly ``intermediate``."""
    ratio = intermediate / hidden
    return ratio if int(hidden * ratio) == intermediate else (intermediate + 0.5) / hidden


def open_clip_plan(config: dict[str, Any], where: str) -> TowerPlan:
    """The timm image tower equivalent to an ``open_clip_config.json`` (or a bare ``model_cfg``)."""
    model_cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
    if not isinstance(model_cfg, dict) or not isinstance(model_cfg.get("vision_cfg"), dict):
        raise InputError(
            "no model_cfg.vision_cfg: not an open_clip config",
            where=where,
            fix="give the open_clip_config.json of an open_clip model",
        )
    vision, pre = model_cfg["vision_cfg"], config.get("preprocess_cfg") or {}
    embed_dim = int(model_cfg.get("embed_dim", 512))
    mean = _three(pre.get("mean"), OPENAI_CLIP_MEAN, where)
    std = _three(pre.get("std"), OPENAI_CLIP_STD, where)
    size = _size(vision.get("image_size", 224))
    text = {
        k: v
        for k, v in (model_cfg.get("text_cfg") or {}).items()
        if k in ("context_length", "hf_model_name", "hf_tokenizer_name", "vocab_size")
    }
    if vision.get("timm_model_name"):
        return _open_clip_timm_plan(vision, embed_dim, size, mean, std, text, where)
    bad = [k for k in _UNSUPPORTED_VISION if vision.get(k)]
    if not isinstance(vision.get("layers", 12), int):
        bad.append("ResNet image tower (layers given per stage)")
    if vision.get("pos_embed_type", "learnable") != "learnable":
        bad.append(f"pos_embed_type {vision['pos_embed_type']!r}")
    pool = "avg" if vision.get("global_average_pool") else vision.get("pool_type", "tok")
    if pool not in ("tok", "avg"):
        bad.append(f"pool_type {pool!r}")
    if bad:
        raise InputError(
            f"this open_clip image tower has no exact timm equivalent ({', '.join(bad)})",
            where=where,
            fix="use a ViT CLIP with class-token or average pooling",
        )
    width = int(vision.get("width", 768))
    patch = _size(vision.get("patch_size", 16))
    kwargs: dict[str, Any] = {
        "patch_size": patch,
        "embed_dim": width,
        "depth": int(vision.get("layers", 12)),
        "num_heads": width // int(vision.get("head_width", 64)),
        "mlp_ratio": _mlp_ratio(width, int(width * float(vision.get("mlp_ratio", 4.0)))),
        "global_pool": "token" if pool == "tok" else "avg",
        "fc_norm": False,
    }
    if model_cfg.get("quick_gelu"):
        kwargs["act_layer"] = "quick_gelu"
    if vision.get("ls_init_value") is not None:
        kwargs["init_values"] = float(vision["ls_init_value"])
    return TowerPlan(
        "open-clip", "vit_base_patch16_clip_224", kwargs, size, patch, mean, std, embed_dim, embed_dim, text
    )


def _open_clip_timm_plan(
    vision: dict[str, Any],
    embed_dim: int,
    size: int,
    mean: tuple,
    std: tuple,
    text: dict[str, Any],
    where: str,
) -> TowerPlan:
    import timm

    arch = str(vision["timm_model_name"])
    if not timm.is_model(arch):
        raise InputError(f"timm has no model {arch!r}", where=where, fix="update timm")
    proj, pool = vision.get("timm_proj", "linear"), vision.get("timm_pool", "avg")
    if proj not in ("linear", "none", "", None) or pool in ("abs_attn", "rot_attn"):
        raise InputError(
            f"open_clip timm tower with projection {proj!r} and pooling {pool!r} has no exact "
            "timm equivalent",
            where=where,
            fix="only linear (or no) projections are converted",
        )
    kwargs: dict[str, Any] = {"global_pool": pool} if pool else {}
    if proj == "linear" and pool and ("vit" in arch or "deit" in arch):
        # open_clip builds the trunk with its default pooling and then only resets the pool, so the final
        # norm stays before the pooling (timm would otherwise move it after an average pool)
        kwargs["fc_norm"] = False
    found = re.search(r"patch(\d+)", arch)
    patch = int(found.group(1)) if found else None
    # linear: the projection is open_clip's head; '': the trunk's own head is the projection; 'none': neither
    rows = 0 if proj == "none" else embed_dim
    return TowerPlan("open-clip", arch, kwargs, size, patch, mean, std, rows, embed_dim, text)


def siglip_plan(config: dict[str, Any], preprocessor: dict[str, Any] | None, where: str) -> TowerPlan:
    """The timm image tower equivalent to a transformers SigLIP ``config.json`` (defaults from
    transformers' own ``SiglipVisionConfig``) and its ``preprocessor_config.json``."""
    from cxrbench.models.vlm_tiny import require_transformers

    transformers = require_transformers()
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind == "siglip2":
        raise InputError(
            "SigLIP 2 NaFlex checkpoints (Siglip2Model, variable resolution) are not converted",
            where=where,
            fix="use the fixed-resolution SigLIP 2 checkpoints (model_type 'siglip', "
            "e.g. google/siglip2-base-patch16-224)",
        )
    if kind not in SIGLIP_TYPES:
        raise InputError(
            f"model_type {kind!r} is not a transformers SigLIP model",
            where=where,
            fix="give the config.json of a SiglipModel (model_type 'siglip')",
        )
    vc = transformers.SiglipVisionConfig(
        **{k: v for k, v in (config.get("vision_config") or {}).items() if k != "model_type"}
    )
    tc = (
        config.get("text_config") or {}
    )  # SiglipTextConfig's defaults: 64 tokens, width 768, vocabulary 32000
    act = _ACTIVATIONS.get(str(vc.hidden_act))
    if act is None or abs(float(vc.layer_norm_eps) - 1e-6) > 1e-12 or int(vc.num_channels) != 3:
        raise InputError(
            f"SigLIP vision config (activation {vc.hidden_act!r}, layer_norm_eps {vc.layer_norm_eps}, "
            f"{vc.num_channels} channels) has no exact timm equivalent",
            where=where,
            fix="only GELU(-tanh) SigLIP towers with LayerNorm eps 1e-6 and RGB input are converted",
        )
    hidden = int(vc.hidden_size)
    use_head = bool(getattr(vc, "vision_use_head", True))
    kwargs: dict[str, Any] = {
        "patch_size": int(vc.patch_size),
        "embed_dim": hidden,
        "depth": int(vc.num_hidden_layers),
        "num_heads": int(vc.num_attention_heads),
        "mlp_ratio": _mlp_ratio(hidden, int(vc.intermediate_size)),
        "act_layer": act,
        "class_token": False,
        "global_pool": "map" if use_head else "avg",
        "fc_norm": False,
    }
    pre = preprocessor or {}
    size: dict[str, Any] = pre["size"] if isinstance(pre.get("size"), dict) else {}
    image_size = int(size.get("height") or size.get("shortest_edge") or vc.image_size)
    if image_size != int(vc.image_size):
        raise InputError(
            f"the preprocessor resizes to {image_size} but the model was built for {vc.image_size}",
            where=where,
            fix="the config and preprocessor_config.json do not belong together",
        )
    mean = _three(pre.get("image_mean"), (0.5, 0.5, 0.5), where)
    std = _three(pre.get("image_std"), (0.5, 0.5, 0.5), where)
    text = {
        "context_length": int(tc.get("max_position_embeddings", 64)),
        "vocab_size": int(tc.get("vocab_size", 32000)),
    }
    embed_dim = int(tc.get("projection_size") or tc.get("hidden_size", 768))
    return TowerPlan(
        "hf-siglip",
        "vit_base_patch16_siglip_224",
        kwargs,
        image_size,
        int(vc.patch_size),
        mean,
        std,
        0,
        embed_dim,
        text,
    )


def build_timm(
    plan: TowerPlan, init: str, image_size: int | None = None, num_classes: int | None = None
) -> nn.Module:
    """The (randomly initialised) timm model of ``plan``; the caller seeds or forks the RNG."""
    from cxrbench.models.arch import timm_create

    return timm_create(
        plan.arch,
        init,
        pretrained=False,
        img_size=int(image_size or plan.image_size),
        num_classes=plan.head_rows if num_classes is None else num_classes,
        **plan.kwargs,
    )


def convert_open_clip(
    state: dict[str, torch.Tensor], model: nn.Module, where: str
) -> dict[str, torch.Tensor]:
    """open_clip weights (whole CLIP or image tower, ``visual.`` keys) -> the keys of timm ``model``,
    through timm's own ``checkpoint_filter_fn`` (it also resamples the position embedding to the model)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    visual = {k: v for k, v in state.items() if k.startswith("visual.")}
    if (
        "visual.class_embedding" not in visual
        and "visual.trunk.pos_embed" not in visual
        and "visual.trunk.blocks.0.norm1.weight" not in visual
    ):
        raise InputError(
            "no open_clip ViT image tower ('visual.class_embedding' or 'visual.trunk.*')",
            where=where,
            fix="give the weights of an open_clip ViT model",
        )
    out = dict(checkpoint_filter_fn(visual, cast(Any, model)))
    if "visual.head.proj.bias" in visual:
        out["head.bias"] = visual["visual.head.proj.bias"]
    return out


def convert_siglip(state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """transformers SigLIP weights (``SiglipModel`` or ``SiglipVisionModel``) -> timm SigLIP ViT keys."""
    import torch

    prefix = next(
        (
            k[: k.index("vision_model.") + len("vision_model.")]
            for k in state
            if "vision_model.embeddings.patch_embedding.weight" in k
        ),
        None,
    )
    if prefix is None:
        raise InputError(
            "no 'vision_model.embeddings.patch_embedding.weight': not a transformers SigLIP model",
            where=where,
            fix="give the model.safetensors of a SiglipModel / SiglipVisionModel",
        )
    sd = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    pos = sd.pop("embeddings.position_embedding.weight")
    out: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": sd.pop("embeddings.patch_embedding.weight"),
        "patch_embed.proj.bias": sd.pop("embeddings.patch_embedding.bias"),
        "pos_embed": pos.unsqueeze(0),
        "norm.weight": sd.pop("post_layernorm.weight"),
        "norm.bias": sd.pop("post_layernorm.bias"),
    }
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            out[dst + f"attn.qkv.{p}"] = torch.cat([sd.pop(src + f"self_attn.{n}_proj.{p}") for n in "qkv"])
            for a, b in (
                ("self_attn.out_proj", "attn.proj"),
                ("layer_norm1", "norm1"),
                ("layer_norm2", "norm2"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
            ):
                out[dst + f"{b}.{p}"] = sd.pop(src + f"{a}.{p}")
    if "head.probe" in sd:
        dim = out["norm.weight"].shape[0]
        out["attn_pool.latent"] = sd.pop("head.probe")
        w, bias = sd.pop("head.attention.in_proj_weight"), sd.pop("head.attention.in_proj_bias")
        out.update(
            {
                "attn_pool.q.weight": w[:dim],
                "attn_pool.kv.weight": w[dim:],
                "attn_pool.q.bias": bias[:dim],
                "attn_pool.kv.bias": bias[dim:],
            }
        )
        for a, b_ in (
            ("head.attention.out_proj", "attn_pool.proj"),
            ("head.layernorm", "attn_pool.norm"),
            ("head.mlp.fc1", "attn_pool.mlp.fc1"),
            ("head.mlp.fc2", "attn_pool.mlp.fc2"),
        ):
            for p in ("weight", "bias"):
                out[f"{b_}.{p}"] = sd.pop(f"{a}.{p}")
    if sd:
        raise InputError(
            f"SigLIP vision keys with no place in timm's ViT: {sorted(sd)[:4]}",
            where=where,
            fix="only standard SigLIP vision towers are converted",
        )
    return out


def to_timm(
    plan: TowerPlan, state: dict[str, torch.Tensor], model: nn.Module, where: str
) -> dict[str, torch.Tensor]:
    """The library's state dict as timm keys for ``model`` (built from ``plan``), checked strictly."""
    if plan.family == "open-clip":
        out = convert_open_clip(state, model, where)
    else:
        from timm.models.vision_transformer import checkpoint_filter_fn

        # resamples pos_embed if needed
        out = dict(checkpoint_filter_fn(convert_siglip(state, where), cast(Any, model)))
    missing, unexpected = model.load_state_dict(out, strict=False)
    if missing or unexpected:
        raise InputError(
            f"the converted image tower does not fit {plan.arch} (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]})",
            where=where,
            fix="the config and the weights do not belong together",
        )
    return out


def text_state(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text-tower part of a whole model's state dict (with the logit scale and bias)."""
    if family == "open-clip":
        return {k: v for k, v in state.items() if not k.startswith("visual.")}
    return {
        k: v for k, v in state.items() if k.startswith("text_model.") or k in ("logit_scale", "logit_bias")
    }
