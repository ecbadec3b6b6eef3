"""adapt.zeroshot: prompt ensembles averaged in embedding space, a finding scored by the softmax over its own
positive/negative pair (never across findings), the head on a timm backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.adapt.features import pooled_features
from cxrbench.adapt.prompts import PromptPair
from cxrbench.adapt.zeroshot import (
    ZeroShotHead,
    attach_head,
    ensemble_embeddings,
    head_from,
    probabilities,
)

E = torch.eye(4)


class FakeVL:
    """A joint space whose text tower maps each prompt to a chosen unit vector (so every answer is known)."""

    def __init__(self, vectors: dict[str, torch.Tensor], scale: float = 10.0, bias: float | None = None,
                 projection: torch.Tensor | None = None):
        self.vectors, self.logit_scale, self.logit_bias = vectors, scale, bias
        self.projection, self.projection_bias = projection, None
        self.calls: list[list[str]] = []

    def encode_text(self, prompts, device=None):
        self.calls.append(list(prompts))
        return torch.stack([F.normalize(self.vectors[p].float(), dim=0) for p in prompts])


PAIRS = [PromptPair("a", ("a1", "a2"), ("not a",)), PromptPair("b", ("b1",), ("not b", "a1"))]
VECTORS = {"a1": E[0], "a2": E[2], "not a": E[1], "b1": E[3], "not b": 2 * E[1]}


def test_ensembles_are_the_normalised_mean_of_normalised_prompt_embeddings():
    vl = FakeVL(VECTORS)
    text = ensemble_embeddings(vl, PAIRS)
    assert text.shape == (2, 2, 4) and vl.calls == [["a1", "a2", "not a", "b1", "not b"]]  # each prompt once
    assert torch.allclose(text[0, 0], (E[0] + E[2]) / math.sqrt(2))
    assert torch.allclose(text[0, 1], E[1]) and torch.allclose(text[1, 0], E[3])
    assert torch.allclose(text[1, 1], (E[1] + E[0]) / math.sqrt(2))  # "not b" normalised before averaging


def test_scores_are_the_softmax_over_the_findings_own_pair_with_known_answers():
    vl = FakeVL(VECTORS, scale=10.0, bias=-7.0)
    head = head_from(vl, ensemble_embeddings(vl, PAIRS))
    feats = torch.stack([E[0], E[1], 3 * E[3]])  # not unit length: the head normalises
    p = probabilities(head, feats.numpy())
    c = 1 / math.sqrt(2)
    # logit = scale x (cos to the positive ensemble - cos to the negative one); the bias cancels.
    # e0: a c - 0, b 0 - c;  e1: a 0 - 1, b 0 - c;  e3: a 0 - 0, b 1 - 0
    expected = 10.0 * np.array([[c, -c], [-1.0, -c], [0.0, 1.0]])
    assert np.allclose(p, 1 / (1 + np.exp(-expected)), atol=1e-6)
    pair = head.pair_logits(feats)  # the model's own logits (cosine x scale + bias) against each pair
    assert torch.allclose(pair[0, 0], torch.tensor([c * 10 - 7, -7.0]), atol=1e-5)
    assert np.allclose(p, torch.softmax(pair, dim=-1)[..., 0].numpy(), atol=1e-6)
    # findings never compete: scoring "a" alone or beside other findings gives the same numbers
    alone = probabilities(head.select([0]), feats.numpy())
    assert np.array_equal(alone[:, 0], p[:, 0]) and head.select([1, 0]).num_findings == 2
    assert np.allclose(probabilities(head.select([1, 0]), feats.numpy()), p[:, ::-1])


def test_swapped_prompts_give_the_complementary_score():
    vl = FakeVL(VECTORS)
    swapped = [PromptPair(p.finding, p.negative, p.positive) for p in PAIRS]
    feats = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    a = probabilities(head_from(vl, ensemble_embeddings(vl, PAIRS)), feats)
    b = probabilities(head_from(vl, ensemble_embeddings(vl, swapped)), feats)
    assert np.allclose(a + b, 1.0, atol=1e-12)


def test_the_projection_the_library_logits_and_the_stored_tensors(offline_weights):
    from cxrbench.models.vlm import load_vision_language

    for init in ("random-clip-test", "random-siglip-test"):
        vl = load_vision_language(init, seed=0)
        pairs = [PromptPair("x", ("pleural effusion",), ("no pleural effusion",)),
                 PromptPair("y", ("cardiomegaly", "enlarged heart"), ("normal heart size",))]
        text = ensemble_embeddings(vl, pairs)
        head = head_from(vl, text)
        d = vl.projection.shape[1] if vl.projection is not None else vl.embed_dim
        feats = torch.randn(5, d, generator=torch.Generator().manual_seed(1))
        img = vl.embed_features(feats)
        lib = torch.stack([vl.logits(img, text[k]) for k in range(2)], dim=1)  # [5, K, 2], the library's
        assert torch.allclose(head.pair_logits(feats), lib, atol=1e-5)
        assert np.allclose(probabilities(head, feats), torch.softmax(lib.double(), -1)[..., 0], atol=1e-6)
        again = ZeroShotHead.from_tensors(head.tensors())
        assert torch.equal(again(feats), head(feats)) and set(head.tensors()) >= {"text", "logit_scale"}
        assert ("projection" in head.tensors()) == (vl.projection is not None)
        assert ("logit_bias" in head.tensors()) == (vl.logit_bias is not None)


def test_attached_head_makes_the_backbone_a_zero_shot_classifier(offline_weights):
    from cxrbench.models.build import create_model

    model, _ = create_model("random-clip-test", 0, seed=0)
    model.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = pooled_features(model, x)
        head = ZeroShotHead(F.normalize(torch.randn(2, 2, feats.shape[1]), dim=-1), 5.0)
        net = attach_head(model, head)
        assert net.num_classes == 2 and torch.allclose(net(x), head(feats), atol=1e-6)
        assert torch.equal(pooled_features(net, x), feats)  # the features are untouched
    with pytest.raises(ValueError, match=r"\[K, 2, E\]"):
        ZeroShotHead(torch.zeros(2, 3, 4), 1.0)
