"""The joint image-text space of a vision-language init: what zero-shot scoring needs from the models stage.

``create_model(init, ...)`` builds a vision-language init's image tower as a timm backbone like any
other init (its classification head new). :func:`load_vision_language` gives the rest:

- the **text tower** with its tokenizer (:class:`~cxrbench.models.vlm_text.TextTower`), so prompts become
  L2-normalised text embeddings (:meth:`VisionLanguage.encode_text`);
- the **image projection** into the joint space (CLIP models: ``visual.proj``, kept by the conversion as
  the timm head of the stored tower; SigLIP has none: its pooled features are the joint-space embedding),
  so :meth:`VisionLanguage.image_embeddings` turns the backbone's pooled features (``forward_head(...,
  pre_logits=True)``, the features linear probes and kNN use too) into L2-normalised image embeddings;
- the model's **logit scale** (exponentiated) and **bias** (SigLIP), recorded in :meth:`describe`.

Registered inits read both from cxrbench's store (``weights fetch``/``import`` put them there),
``random-clip-test``/``random-siglip-test`` build them from the seed, ``local-dir:DIR`` reads an open_clip or
transformers SigLIP folder. Cosine similarity of the two embeddings, times ``logit_scale`` plus
``logit_bias``, is the library's own image-text logit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cxrbench.common.errors import InputError
from cxrbench.models import store as wt
from cxrbench.models.resolve import resolve_init
from cxrbench.models.vlm_text import TEXT_WEIGHTS, TextTower, from_tiny, load_text

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class VisionLanguage:
    """A vision-language init's text tower and joint space (see the module docstring).

    ``projection`` (``[embed_dim, num_features]``) and ``projection_bias`` map the backbone's pooled
    features into the joint space; both None when the features already are the joint-space embedding."""

    init: str
    family: str
    text: TextTower
    projection: torch.Tensor | None
    projection_bias: torch.Tensor | None
    embed_dim: int

    @property
    def logit_scale(self) -> float:
        """The multiplier of cosine similarities (``exp`` of the model's parameter)."""
        return self.text.logit_scale

    @property
    def logit_bias(self) -> float | None:
        """The logit bias (SigLIP), None for CLIP models."""
        return self.text.logit_bias

    def encode_text(self, prompts: Sequence[str], batch_size: int = 256, device: Any = None) -> torch.Tensor:
        """L2-normalised text embeddings ``float32 [N, embed_dim]`` (CPU)."""
        return self.text.encode(prompts, batch_size=batch_size, device=device)

    def embed_features(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[N, num_features]`` -> L2-normalised joint-space embeddings."""
        import torch.nn.functional as F

        x = features.float()
        if self.projection is not None:
            x = F.linear(
                x,
                self.projection.to(x.device, x.dtype),
                None if self.projection_bias is None else self.projection_bias.to(x.device, x.dtype),
            )
        return F.normalize(x, dim=-1)

    def image_embeddings(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised joint-space embeddings of normalized ``images`` by the timm backbone ``model``."""
        timm_model: Any = model
        pooled = timm_model.forward_head(timm_model.forward_features(images), pre_logits=True)
        return self.embed_features(pooled)

    def logits(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """The library's image-text logits: cosine similarity times the scale, plus the bias."""
        out = image_embeddings @ text_embeddings.T * self.logit_scale
        return out + self.logit_bias if self.logit_bias is not None else out

    def describe(self) -> dict[str, Any]:
        """What a run records: init, family, joint-space width, logit scale and bias, tokenizer, source."""
        return {
            "init": self.init,
            "embed_dim": self.embed_dim,
            "projection": self.projection is not None,
            **self.text.describe(),
        }


def image_projection(family: str, state: dict[str, Any]) -> tuple[Any, Any]:
    """The image projection of a library state dict as a linear layer's (weight, bias), or (None, None)."""
    if family != "open-clip":
        return None, None
    if "visual.proj" in state:
        return state["visual.proj"].T.contiguous(), None
    for prefix in ("visual.head.proj.", "visual.trunk.head."):
        if f"{prefix}weight" in state:
            return state[f"{prefix}weight"], state.get(f"{prefix}bias")
    return None, None


def is_vision_language(init: str) -> bool:
    """True when ``init`` names a vision-language model whose text tower cxrbench can load."""
    return resolve_init(init).vlm is not None


def _not_vlm(init: str) -> InputError:
    from cxrbench.models.registry import INITS
    from cxrbench.models.vlm_convert import VLM_FORMATS

    names = [n for n, s in INITS.items() if s.convert in VLM_FORMATS]
    return InputError(
        f"init {init} is not a vision-language model (no text tower)",
        where=f"init {init}",
        fix=f"use one of {', '.join(names)}, random-clip-test, random-siglip-test, or "
        "local-dir:FOLDER holding an open_clip or transformers SigLIP model",
    )


def load_vision_language(init: str, seed: int = 0) -> VisionLanguage:
    """The text tower and joint space of ``init`` (CPU, eval mode). ``seed`` matters only for the tiny
    test models, whose towers are drawn from it (use the seed the image tower was built with)."""
    from cxrbench.models import safeload

    r = resolve_init(init)
    if r.vlm is None:
        raise _not_vlm(init)
    if r.tiny:
        from cxrbench.models.vlm_tiny import build_tiny

        tiny = build_tiny(r.tiny, seed)
        weight, bias = image_projection(tiny.family, tiny.model.state_dict())
        text = from_tiny(tiny, f"random-{r.tiny} (seed {seed})")
    elif r.vlm_folder is not None:
        from cxrbench.models.vlm_folder import read_folder

        lib = read_folder(r.vlm_folder, init)
        weight, bias = image_projection(lib.family, safeload.load_state_dict(lib.weights))
        text = load_text(lib.folder, lib.weights, lib.family)
    else:
        from cxrbench.models.vlm_store import text_dir

        location = wt.require(r.source, r.init)  # type: ignore[arg-type]
        folder = text_dir(r.spec)
        if not (folder / TEXT_WEIGHTS).is_file():
            raise InputError(
                f"the text tower of {r.init} is missing ({folder / TEXT_WEIGHTS})",
                where=str(folder),
                fix=f"convert the init again: `cxrbench weights fetch {r.init} --force` or "
                f"`cxrbench weights import {r.init} FOLDER --force`",
            )
        weight, bias = None, None
        if r.vlm == "open-clip":
            with safeload.as_safetensors(location.path) as st:
                heads = safeload.read_tensors(
                    st, [k for k in ("head.weight", "head.bias") if k in safeload.tensor_shapes(st)]
                )
            weight, bias = heads.get("head.weight"), heads.get("head.bias")
        text = load_text(folder, folder / TEXT_WEIGHTS, r.vlm)
    embed_dim = int(weight.shape[0]) if weight is not None else _text_width(text)
    return VisionLanguage(
        init=r.init, family=r.vlm, text=text, projection=weight, projection_bias=bias, embed_dim=embed_dim
    )


def _text_width(text: TextTower) -> int:
    return int(text.encode(["x"]).shape[1])
