"""Zero-shot classification in a vision-language model's joint image-text space.

Each finding has a positive and a negative prompt ensemble (:mod:`cxrbench.adapt.prompts`). Every
prompt is embedded by the model's own text tower and L2-normalised; an ensemble is the mean of its
prompts' embeddings, normalised again (CheXzero's ``zeroshot_classifier``), so a finding has two text
embeddings ``t+`` and ``t-``. An image's joint-space embedding ``e`` (the backbone's pooled features
through the model's image projection, L2-normalised: :meth:`VisionLanguage.embed_features`) is scored
per finding by the softmax over *that finding's pair only*::

    l± = s * cos(e, t±) (+ b)            (the model's own image-text logits: scale s, SigLIP's bias b)
    p  = exp(l+) / (exp(l+) + exp(l-)) = sigmoid(l+ - l-) = sigmoid(s * e . (t+ - t-))

Findings never compete (a softmax across findings would make them exclusive). The bias cancels.
CheXzero's pairwise softmax uses the bare cosines (``s = 1``); the model's scale changes no AUROC
(a monotone map per finding) but gives probabilities on the scale the model was trained with.

:class:`ZeroShotHead` is that map as a classifier head on the backbone's pooled features: its output
``l+ - l-`` is a logit whose sigmoid is the pairwise softmax, so a backbone with this head
(:func:`attach_head`) is an ordinary multi-label classifier (scoring, saliency, ONNX export).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.adapt.prompts import PromptPair


def ensemble_embeddings(vl: Any, pairs: Sequence[PromptPair], device: Any = None) -> torch.Tensor:
    """float32 ``[K, 2, E]``: per finding the normalised mean of its positive and of its negative
    prompts' (normalised) text embeddings, by ``vl`` (a :class:`cxrbench.models.vlm.VisionLanguage`).
    Each distinct prompt is encoded once."""
    prompts = list(dict.fromkeys(p for pair in pairs for p in (*pair.positive, *pair.negative)))
    emb = vl.encode_text(prompts, device=device).float()
    row = {p: i for i, p in enumerate(prompts)}
    out = [torch.stack([F.normalize(emb[[row[p] for p in side]].mean(0), dim=0)
                        for side in (pair.positive, pair.negative)]) for pair in pairs]
    return torch.stack(out)


class ZeroShotHead(nn.Module):
    """Pooled backbone features ``[B, D]`` -> logits ``[B, K]`` (``l+ - l-`` per finding).

    ``text``: ``[K, 2, E]`` (positive, negative ensemble embeddings); ``projection`` ``[E, D]`` and
    ``projection_bias`` ``[E]``: the model's image projection (None when the pooled features already
    are the joint-space embedding, as in SigLIP); ``logit_scale`` (exponentiated) and ``logit_bias``.
    """

    text: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor

    def __init__(self, text: torch.Tensor, logit_scale: float, projection: torch.Tensor | None = None,
                 projection_bias: torch.Tensor | None = None, logit_bias: float | None = None) -> None:
        super().__init__()
        if text.ndim != 3 or text.shape[1] != 2:
            raise ValueError(f"text embeddings must be [K, 2, E], got {tuple(text.shape)}")
        self.register_buffer("text", text.detach().float().clone().contiguous())
        self.register_buffer("logit_scale", torch.tensor([float(logit_scale)]))
        self.register_buffer("logit_bias", torch.tensor([0.0 if logit_bias is None else float(logit_bias)]))
        self.has_bias = logit_bias is not None
        self.proj: nn.Linear | None = None
        if projection is not None:
            out_dim, in_dim = projection.shape
            self.proj = nn.Linear(in_dim, out_dim, bias=projection_bias is not None)
            with torch.no_grad():
                self.proj.weight.copy_(projection.float())
                if projection_bias is not None and self.proj.bias is not None:
                    self.proj.bias.copy_(projection_bias.float())
            self.proj.requires_grad_(False)
        if text.shape[2] != (projection.shape[0] if projection is not None else text.shape[2]):
            raise ValueError("the projection's output width differs from the text embeddings'")

    @property
    def num_findings(self) -> int:
        return int(self.text.shape[0])

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised joint-space image embeddings ``[B, E]``."""
        x = features.float()
        return F.normalize(self.proj(x) if self.proj is not None else x, dim=-1)

    def pair_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The model's image-text logits against each finding's pair: ``[B, K, 2]`` (positive, negative)."""
        out = torch.einsum("be,kse->bks", self.embed(features), self.text) * self.logit_scale
        return out + self.logit_bias if self.has_bias else out

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        directions = self.text[:, 0] - self.text[:, 1]  # [K, E]
        return self.embed(features) @ directions.T * self.logit_scale

    def tensors(self) -> dict[str, torch.Tensor]:
        """What a run stores (plain names, CPU, contiguous)."""
        out = {"text": self.text, "logit_scale": self.logit_scale}
        if self.has_bias:
            out["logit_bias"] = self.logit_bias
        if self.proj is not None:
            out["projection"] = self.proj.weight
            if self.proj.bias is not None:
                out["projection_bias"] = self.proj.bias
        return {k: v.detach().cpu().float().contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> ZeroShotHead:
        """The head written by :meth:`tensors`."""
        bias = t.get("logit_bias")
        return cls(t["text"], float(t["logit_scale"].reshape(-1)[0]), t.get("projection"),
                   t.get("projection_bias"), None if bias is None else float(bias.reshape(-1)[0]))

    def select(self, rows: Sequence[int]) -> ZeroShotHead:
        """A head of only the findings ``rows`` (in that order)."""
        t = self.tensors()
        t["text"] = t["text"][list(rows)]
        return ZeroShotHead.from_tensors(t)


def head_from(vl: Any, text: torch.Tensor) -> ZeroShotHead:
    """The head of a :class:`~cxrbench.models.vlm.VisionLanguage` and text embeddings ``[K, 2, E]``."""
    return ZeroShotHead(text, vl.logit_scale, vl.projection, vl.projection_bias, vl.logit_bias)


@torch.no_grad()
def probabilities(head: ZeroShotHead, features: np.ndarray | torch.Tensor, device: Any = "cpu",
                  chunk: int = 65536) -> np.ndarray:
    """float64 ``[N, K]``: the pairwise-softmax score of every finding for pooled features ``[N, D]``."""
    head = head.to(device).eval()
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features, np.float32))
    out = [torch.sigmoid(head(x[i:i + chunk].to(device)).double()).cpu() for i in range(0, len(x), chunk)]
    return torch.cat(out).numpy() if out else np.zeros((0, head.num_findings))


def attach_head(model: nn.Module, head: ZeroShotHead) -> nn.Module:
    """``model`` (a timm backbone) with ``head`` as its classifier: ``model(x)`` is then
    ``head(forward_head(forward_features(x), pre_logits=True))``, the zero-shot logits."""
    timm_model: Any = model
    name = str((getattr(timm_model, "pretrained_cfg", None) or {}).get("classifier") or "head")
    parent: Any = model
    *path, leaf = name.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, leaf, head)
    timm_model.num_classes = head.num_findings
    return model
