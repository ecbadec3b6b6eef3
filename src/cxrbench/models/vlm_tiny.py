"""Tiny randomly initialised vision-language models, built offline with their own libraries.

``random-clip-test`` is an open_clip ``CLIP`` (ViT image tower, causal text transformer, open_clip's
own ``SimpleTokenizer``, whose BPE vocabulary ships with open_clip) and ``random-siglip-test`` a
transformers ``SiglipModel`` with a byte-level tokenizer made here with ``tokenizers`` (256 byte
symbols, no merges: every string tokenizes, nothing is downloaded). Both have 2 layers of width 32
and take 32-pixel images (patch 16), so tests and phantom studies run the whole vision-language path
(conversion of the image tower to timm, text encoding, joint-space embeddings) in seconds on a CPU.

The weights are the library's own initialisation drawn from ``seed``, then every parameter is
perturbed by ``0.1 * N(0, 1)`` so that layer norms and biases are not the trivial 1 and 0 (a wrong
mapping between them could hide otherwise). The same ``seed`` always gives the same model, so the
image tower ``create_model`` builds and the text tower :mod:`cxrbench.models.vlm` builds belong together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxrbench.common.errors import InputError

TINY_VLMS: dict[str, str] = {"clip-test": "open-clip", "siglip-test": "hf-siglip"}
"""The tiny models, by the name after ``random-``, and their library format."""


_WIDTH = 32
_CONTEXT = 16
_SPECIALS = ("<pad>", "</s>", "<unk>")


def require_open_clip() -> Any:
    """The open_clip module, or one InputError naming the extra that installs it."""
    try:
        import open_clip
    except ImportError:
        raise InputError(
            "this vision-language model needs the open_clip_torch package",
            where="init",
            fix="pip install 'cxrbench[vlm]'",
        ) from None
    return open_clip


def require_transformers() -> Any:
    """The transformers module, or one InputError naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise InputError(
            "this vision-language model needs the transformers package",
            where="init",
            fix="pip install 'cxrbench[vlm]'",
        ) from None
    return transformers


def tiny_clip_config() -> dict[str, Any]:
    """The ``open_clip_config.json`` of ``random-clip-test`` (``model_cfg`` + ``preprocess_cfg``)."""
    return {
        "model_cfg": {
            "embed_dim": _WIDTH,
            "quick_gelu": True,  # as OpenAI's CLIP: the conversion must carry the activation over
            "vision_cfg": {
                "image_size": 32,
                "layers": 2,
                "width": _WIDTH,
                "head_width": 16,
                "patch_size": 16,
                "mlp_ratio": 2.0,
            },
            "text_cfg": {
                "context_length": _CONTEXT,
                "vocab_size": 49408,
                "width": _WIDTH,
                "heads": 2,
                "layers": 2,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }


def tiny_siglip_config() -> dict[str, Any]:
    """The ``config.json`` (transformers ``SiglipConfig``) of ``random-siglip-test``."""
    return {
        "model_type": "siglip",
        "text_config": {
            "vocab_size": 256 + len(_SPECIALS),
            "hidden_size": _WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": _CONTEXT,
            "projection_size": _WIDTH,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 1,
        },
        "vision_config": {
            "hidden_size": _WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
    }


TINY_SIGLIP_PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "SiglipImageProcessor",
    "do_resize": True,
    "size": {"height": 32, "width": 32},
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_rescale": True,
    "rescale_factor": 1 / 255,
}
"""The ``preprocessor_config.json`` of ``random-siglip-test`` (SigLIP's 0.5/0.5 normalization)."""


def byte_tokenizer(context_length: int = _CONTEXT) -> Any:
    """A transformers fast tokenizer over the 256 bytes (GPT-2's byte-to-symbol table, no merges),
    lower-casing, ending every text with ``</s>``; made offline with ``tokenizers``."""
    transformers = require_transformers()
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    symbols = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    vocab.update({s: len(_SPECIALS) + i for i, s in enumerate(sorted(symbols))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=context_length,
    )


@dataclass
class TinyVlm:
    """A tiny library model: ``model`` (open_clip ``CLIP`` or transformers ``SiglipModel``, eval mode),
    its ``tokenizer``, its ``config`` (as the library's folder would hold it) and ``family``."""

    family: str
    model: Any
    tokenizer: Any
    config: dict[str, Any]


def _perturb(model: Any, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(int(seed) + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_" not in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def build_tiny(name: str, seed: int = 0) -> TinyVlm:
    """The tiny model ``name`` (a key of :data:`TINY_VLMS`), drawn from ``seed`` (global RNG untouched)."""
    import torch

    if name not in TINY_VLMS:
        raise InputError(
            f"unknown tiny vision-language model {name!r}",
            where="init",
            fix=f"one of {', '.join('random-' + n for n in TINY_VLMS)}",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if TINY_VLMS[name] == "open-clip":
            open_clip = require_open_clip()
            config = tiny_clip_config()
            model = open_clip.CLIP(**config["model_cfg"])
            tokenizer = open_clip.SimpleTokenizer(context_length=_CONTEXT)
        else:
            transformers = require_transformers()
            config = tiny_siglip_config()
            model = transformers.SiglipModel(transformers.SiglipConfig(**config))
            with torch.no_grad():  # SigLIP's own initial temperature and bias (Zhai et al. 2023)
                model.logit_scale.fill_(math.log(10.0))
                model.logit_bias.fill_(-10.0)
            tokenizer = byte_tokenizer()
        _perturb(model, seed)
    return TinyVlm(family=TINY_VLMS[name], model=model.eval(), tokenizer=tokenizer, config=config)


def save_tiny(name: str, folder: Any, seed: int = 0) -> TinyVlm:
    """Write the tiny model ``name`` as its library publishes models (a hub repository's folder):
    open_clip: ``open_clip_config.json`` + ``open_clip_model.safetensors``; SigLIP: transformers'
    ``save_pretrained`` (``config.json``, ``model.safetensors``), ``preprocessor_config.json`` and the
    tokenizer files. Returns the model written."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    tiny = build_tiny(name, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tiny.family == "open-clip":
        (folder / "open_clip_config.json").write_text(json.dumps(tiny.config, indent=2), encoding="utf-8")
        save_file(
            {k: v.contiguous() for k, v in tiny.model.state_dict().items()},
            str(folder / "open_clip_model.safetensors"),
        )
    else:
        tiny.model.save_pretrained(str(folder))
        tiny.tokenizer.save_pretrained(str(folder))
        (folder / "preprocessor_config.json").write_text(
            json.dumps(TINY_SIGLIP_PREPROCESSOR, indent=2), encoding="utf-8"
        )
    return tiny
