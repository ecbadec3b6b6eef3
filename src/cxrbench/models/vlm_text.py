"""Text towers of vision-language models, loaded with their own libraries, and prompt encoding.

A :class:`TextTower` holds the library's text model (open_clip ``CLIP``/``CustomTextCLIP`` without its
image tower, or transformers ``SiglipTextModel``), its tokenizer, and the model's logit scale (already
exponentiated: the multiplier of cosine similarities) and bias (SigLIP; None for CLIP).
:meth:`TextTower.encode` turns prompts into L2-normalised joint-space embeddings exactly as the
library does (open_clip ``encode_text(normalize=True)``; SigLIP: the text model's ``pooler_output``
with the lower-cased text padded to ``max_length`` and no attention mask, as SigLIP was trained).

Text towers are read from a folder in the library's own layout: the ``text/`` bundle that ``weights
fetch``/``import`` write beside a converted image tower (configs, tokenizer files, ``text.safetensors``
holding only the text weights and the logit scale/bias), or a model folder given as
``--init local-dir:DIR``. open_clip models whose text tower is a transformers model (BiomedCLIP's
PubMedBERT) also need that model's ``config.json``: ``hf_text/`` in the folder, else the Hugging Face
cache of the repository their config names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_json
from cxrbench.models.vlm_tiny import TinyVlm, require_open_clip, require_transformers

TEXT_DIR = "text"
TEXT_WEIGHTS = "text.safetensors"
HF_TEXT_DIR = "hf_text"
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "added_tokens.json",
)
OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"


@dataclass
class TextTower:
    """A loaded text tower: ``family`` (``open-clip`` / ``hf-siglip``), the library ``module`` (eval
    mode, CPU), its ``tokenizer``, ``context_length`` (tokens), ``logit_scale`` (exp'd) and
    ``logit_bias`` (None without one); ``source`` says where it was read from."""

    family: str
    module: Any
    tokenizer: Any
    context_length: int
    logit_scale: float
    logit_bias: float | None
    source: str

    def tokenize(self, prompts: Sequence[str]) -> Any:
        """Token ids ``[N, context_length]`` as the library makes them."""
        if self.family == "open-clip":
            return self.tokenizer(list(prompts))
        # SigLIP was trained on lower-cased text: SigLIP's own tokenizer lower-cases, SigLIP 2's Gemma
        # tokenizer does not (its hub config names GemmaTokenizer, not Siglip2Tokenizer), so do it here
        prompts = [p.lower() for p in prompts]
        enc = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"]

    def encode(self, prompts: Sequence[str], batch_size: int = 256, device: Any = None) -> Any:
        """L2-normalised text embeddings ``float32 [N, D]`` (CPU) of ``prompts``."""
        import torch
        import torch.nn.functional as F

        prompts = [str(p) for p in prompts]
        if not prompts:
            raise InputError("no prompts to encode", where="prompts", fix="give at least one prompt")
        device = torch.device(device or "cpu")
        self.module.to(device)
        out = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                ids = self.tokenize(prompts[i : i + batch_size]).to(device)
                if self.family == "open-clip":
                    emb = self.module.encode_text(ids)
                else:
                    emb = self.module(input_ids=ids).pooler_output
                out.append(F.normalize(emb.float(), dim=-1).cpu())
        self.module.to("cpu")
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        """What a run records about the text side."""
        return {
            "format": self.family,
            "context_length": self.context_length,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "tokenizer": type(self.tokenizer).__name__,
            "source": self.source,
        }


def _scale_bias(scale: Any, bias: Any) -> tuple[float, float | None]:
    s = float(scale.detach().reshape(-1)[0]) if scale is not None else math.log(1 / 0.07)
    b = float(bias.detach().reshape(-1)[0]) if bias is not None else None
    return math.exp(s), b


def from_tiny(tiny: TinyVlm, source: str) -> TextTower:
    """The text tower of a tiny test model (the model itself: its image tower is not used here)."""
    if tiny.family == "open-clip":
        scale, bias = _scale_bias(tiny.model.logit_scale, getattr(tiny.model, "logit_bias", None))
        ctx = int(tiny.model.context_length)
        return TextTower("open-clip", tiny.model, tiny.tokenizer, ctx, scale, bias, source)
    scale, bias = _scale_bias(tiny.model.logit_scale, tiny.model.logit_bias)
    ctx = int(tiny.model.config.text_config.max_position_embeddings)
    return TextTower("hf-siglip", tiny.model.text_model, tiny.tokenizer, ctx, scale, bias, source)


def hf_text_dir(folder: Path, name: str) -> Path:
    """Where the transformers config of an open_clip text tower is: ``hf_text/`` or the HF cache."""
    local = folder / HF_TEXT_DIR
    if (local / HF_CONFIG).is_file():
        return local
    from cxrbench.models import store as wt

    found = wt.locate_extra(wt.WeightSource(key=name.replace("/", "--"), hf_repo=name), HF_CONFIG)
    if found is None:
        raise InputError(
            f"the text tower is the transformers model {name!r}, whose {HF_CONFIG} is neither in "
            f"{local} nor in the HF cache",
            where=str(folder),
            fix=f"online, `cxrbench weights fetch` the init (it downloads it too); or copy {name}'s "
            f"{HF_CONFIG} to {local / HF_CONFIG}",
        )
    return found.parent


def _load_open_clip(folder: Path, state: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    open_clip = require_open_clip()
    cfg = read_json(folder / OPEN_CLIP_CONFIG)
    model_cfg = dict(cfg.get("model_cfg", cfg))
    if "multimodal_cfg" in model_cfg:
        raise InputError(
            "CoCa models (with a text decoder) are not supported",
            where=str(folder),
            fix="use a CLIP-style open_clip model",
        )
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    custom = bool(model_cfg.pop("custom_text", False)) or bool(text_cfg.get("hf_model_name"))
    if text_cfg.get("hf_model_name"):
        text_cfg.update(
            hf_model_name=str(hf_text_dir(folder, text_cfg["hf_model_name"])), hf_model_pretrained=False
        )
    vision_cfg = dict(model_cfg.get("vision_cfg") or {})
    vision_cfg["timm_model_pretrained"] = False
    model_cfg.update(text_cfg=text_cfg, vision_cfg=vision_cfg)
    model = (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**model_cfg)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict  # old layout -> CustomTextCLIP

        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if (
        "logit_bias" in state
        and getattr(model, "logit_bias", None) is not None
        and state["logit_bias"].ndim != model.logit_bias.ndim
    ):
        state["logit_bias"] = state["logit_bias"].reshape(model.logit_bias.shape)
    state.pop("text.transformer.embeddings.position_ids", None)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("visual.")]
    if missing or unexpected:
        raise InputError(
            f"the text weights do not fit the open_clip config (missing {missing[:3]}, "
            f"unexpected {list(unexpected)[:3]})",
            where=str(folder),
            fix="the config and the weights do not belong together",
        )
    from torch import nn

    model.visual = nn.Identity()  # the image tower is cxrbench's timm model; free its memory
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return model, tokenizer, text_cfg


def _load_siglip(folder: Path, state: dict[str, Any]) -> tuple[Any, Any]:
    transformers = require_transformers()
    cfg = read_json(folder / HF_CONFIG)
    tc = transformers.SiglipTextConfig(
        **{k: v for k, v in (cfg.get("text_config") or {}).items() if k != "model_type"}
    )
    module = transformers.SiglipTextModel(tc)
    own = set(module.state_dict())
    prefixed = any(k.startswith("text_model.") for k in own)
    text = {
        (k if prefixed else k[len("text_model.") :]): v
        for k, v in state.items()
        if k.startswith("text_model.")
    }
    unexpected = [k for k in text if k not in own and not k.endswith("position_ids")]
    missing, _ = module.load_state_dict({k: v for k, v in text.items() if k in own}, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise InputError(
            f"the text weights do not fit the SigLIP config (missing {missing[:3]}, unexpected "
            f"{list(unexpected)[:3]})",
            where=str(folder),
            fix="the config and the weights do not belong together",
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(
            f"cannot load the tokenizer ({first})",
            where=str(folder),
            fix="copy the repository's tokenizer files into the folder; SigLIP's sentencepiece "
            "tokenizer needs `pip install 'cxrbench[vlm]'` (sentencepiece)",
        ) from None
    return module, tokenizer


def load_text(folder: Path, weights: Path, family: str) -> TextTower:
    """The text tower of the model in ``folder`` (library layout), its weights read from ``weights``
    (a whole model's file or a ``text.safetensors``) with the safe loader."""
    from cxrbench.models import safeload
    from cxrbench.models.vlm_convert import text_state

    state = text_state(family, safeload.load_state_dict(weights))
    scale, bias = _scale_bias(state.get("logit_scale"), state.get("logit_bias"))
    if family == "open-clip":
        module, tokenizer, text_cfg = _load_open_clip(folder, state)
        ctx = int(getattr(module, "context_length", text_cfg.get("context_length", 77)))
    else:
        module, tokenizer = _load_siglip(folder, state)
        ctx = int(module.config.max_position_embeddings)
    return TextTower(family, module.eval(), tokenizer, ctx, scale, bias, str(folder))
