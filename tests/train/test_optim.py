import math

import pytest
import timm
import torch

from cxrbench.common.errors import InputError
from cxrbench.train.optim import LRSchedule, layer_scales, param_groups, unwrap


def test_constant_with_linear_warmup():
    s = LRSchedule(base_lr=1.0, total_steps=100, warmup_steps=4)
    lrs = [s.lr(i) for i in range(10)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4:] == [1.0] * 6


def test_cosine_decays_to_min_lr_and_is_a_pure_function_of_the_step():
    s = LRSchedule(base_lr=1e-3, total_steps=110, warmup_steps=10, kind="cosine", min_lr=1e-5)
    lrs = [s.lr(i) for i in range(111)]
    assert lrs[10] == pytest.approx(1e-3)
    assert lrs[60] == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)  # half way
    assert lrs[110] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert [s.lr(i) for i in reversed(range(111))] == lrs[::-1]
    assert s.lr(10_000) == pytest.approx(1e-5)  # past the end: stays at the floor


def test_apply_scales_each_group():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p1], "lr_scale": 0.5}, {"params": [p2]}], lr=1.0)
    s = LRSchedule(2.0, 10)
    assert s.apply(opt, 3) == 2.0
    assert [g["lr"] for g in opt.param_groups] == [1.0, 2.0]
    assert LRSchedule(**s.state_dict()) == s


def test_bad_schedule():
    with pytest.raises(InputError, match="unknown schedule"):
        LRSchedule(1.0, 10, kind="step")
    with pytest.raises(InputError, match="at least one step"):
        LRSchedule(1.0, 0)


def _vit():
    return timm.create_model("test_vit", pretrained=False, num_classes=2, img_size=32)


def test_weight_decay_spares_biases_norms_and_tokens():
    model = _vit()
    groups = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    spared = [names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]]
    assert "head.weight" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert {"head.bias", "cls_token", "pos_embed", "norm.weight"} <= set(spared)
    assert len(decayed) + len(spared) == len(list(model.parameters()))
    assert layer_scales(groups) == [1.0]


def test_layer_decay_scales_grow_with_depth():
    model = _vit()
    depth = len(model.blocks)
    groups = param_groups(model, weight_decay=0.0, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["head.weight"])] == 1.0
    assert scale[id(named["patch_embed.proj.weight"])] == pytest.approx(0.5 ** (depth + 1))
    block_scales = [scale[id(named[f"blocks.{i}.mlp.fc1.weight"])] for i in range(depth)]
    assert block_scales == sorted(block_scales) and math.isclose(block_scales[-1], 0.5 ** 1)


def test_frozen_parameters_are_left_out():
    model = _vit()
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    groups = param_groups(model)
    assert sum(len(g["params"]) for g in groups) == 2
    model.head.requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        param_groups(model)


def test_unwrap_compiled_module():
    model = _vit()
    assert unwrap(torch.compile(model)) is model
    assert unwrap(model) is model
