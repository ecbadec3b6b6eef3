"""train.methods.lora: adapters only on the projections, counts, the merge equals the adapted model, plain
timm weights; ConvNeXt too; grouped convolutions and a missing peft are one-line errors."""

from __future__ import annotations

import copy
import sys

import pytest
import timm
import torch

from cxrbench.common.errors import InputError
from cxrbench.models.build import create_model
from cxrbench.train.methods.lora import LoraSpec, apply_lora, lora_layers, merged_state_dict, target_modules

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def randomize_b(model, seed=0):
    """LoRA's B starts at zero (the adapted model equals the base): give it values to test the merge."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_vit_adapters_on_attention_and_mlp_projections_only_with_exact_counts():
    model, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    base = {n: p.numel() for n, p in model.named_parameters()}
    info = apply_lora(model, LoraSpec(rank=4, alpha=8), seed=0)
    assert set(info.targets) == {"qkv", "proj", "fc1", "fc2"}
    assert len(info.modules) == 4 * len(model.blocks) and "patch_embed.proj" not in info.modules
    expected = 0
    for name in info.modules:
        layer = model.get_submodule(name).get_base_layer()
        expected += 4 * (layer.in_features + layer.out_features)  # A: r x in, B: out x r
    assert info.adapter_params == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)  # apply_lora freezes the head too
    assert info.total_params == sum(base.values()) + expected
    assert lora_layers(model).keys() == set(info.modules)


def test_merged_weights_equal_the_adapted_model_and_peft_merge_and_load_in_plain_timm():
    model, _ = create_model("random-vit-test", 3, image_size=32, seed=0)
    apply_lora(model, LoraSpec(rank=4, alpha=16, dropout=0.1), seed=0)
    randomize_b(model)
    model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    merged = merged_state_dict(model)
    assert not any("lora" in k or "base_layer" in k for k in merged)
    plain = timm.create_model("test_vit", pretrained=False, num_classes=3, img_size=32).eval()
    plain.load_state_dict(merged, strict=True)  # plain timm keys, nothing missing or extra
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() < 1e-5
    reference = copy.deepcopy(model)  # peft's own merge, as merge_and_unload does it
    for layer in lora_layers(reference).values():
        layer.merge()
    for name, layer in lora_layers(reference).items():
        assert torch.allclose(layer.get_base_layer().weight, merged[f"{name}.weight"], atol=1e-6)


def test_convnext_adapts_its_pointwise_layers_and_refuses_depthwise_convolutions():
    model, _ = create_model("random-convnext-test", 2, image_size=32, seed=0)
    names, wanted = target_modules(model)
    assert wanted == ("fc1", "fc2") and all(n.startswith("stages.") for n in names)
    info = apply_lora(model, LoraSpec(rank=2), seed=0)
    randomize_b(model)
    model.eval()
    plain = timm.create_model("test_convnext", pretrained=False, num_classes=2).eval()
    plain.load_state_dict(merged_state_dict(model), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - plain(x)).abs().max() < 1e-5
    assert info.adapter_params > 0
    fresh, _ = create_model("random-convnext-test", 2, image_size=32, seed=0)
    with pytest.raises(InputError, match="grouped .depthwise. convolutions.*leave out conv_dw"):
        target_modules(fresh, ["fc1", "conv_dw"])


def test_unknown_target_and_missing_peft_are_one_line_errors(monkeypatch):
    model, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    with pytest.raises(InputError, match="match no linear.*choose among fc1, fc2, proj, qkv"):
        target_modules(model, ["qkv", "attn_out"])
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(InputError) as info:
        apply_lora(model, LoraSpec(), seed=0)
    assert "pip install 'cxrbench[lora]'" in info.value.one_line()


def test_adapters_are_drawn_from_the_seed_without_touching_the_global_rng():
    a, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    b, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    state = torch.get_rng_state()
    apply_lora(a, LoraSpec(), seed=5)
    assert torch.equal(state, torch.get_rng_state())
    apply_lora(b, LoraSpec(), seed=5)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
