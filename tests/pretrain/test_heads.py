"""pretrain.heads: the DINO head against lightly's, the student/teacher network, the EMA update."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from cxrbench.pretrain.heads import DINOHead, SSLNet, ema_update


def _backbone():
    torch.manual_seed(0)
    return timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32, dynamic_img_size=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # lightly's head uses the old weight_norm
def test_dino_head_matches_lightly_with_the_same_weights():
    heads = pytest.importorskip(
        "lightly.models.modules.heads", reason="lightly (dev dependency) is the reference"
    )
    torch.manual_seed(0)
    ours = DINOHead(16, out_dim=40, hidden_dim=24, bottleneck_dim=8, n_layers=3)
    ref = heads.DINOProjectionHead(
        input_dim=16, hidden_dim=24, bottleneck_dim=8, output_dim=40, norm_last_layer=True
    )
    linears = [m for m in ours.mlp if isinstance(m, torch.nn.Linear)]
    ref_linears = [m for m in ref.layers if isinstance(m, torch.nn.Linear)]
    assert len(linears) == len(ref_linears) == 3
    with torch.no_grad():
        for a, b in zip(linears, ref_linears, strict=True):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
        ref.last_layer.weight_v.copy_(ours.last_layer.parametrizations.weight.original1)
    x = torch.randn(5, 16)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    # unit-norm prototypes, fixed norm: the logits are cosine similarities
    assert torch.allclose(ours.last_layer.weight.norm(dim=1), torch.ones(40), atol=1e-5)
    assert ours(x * 100).abs().max() <= 1.0 + 1e-5
    assert [p.shape for p in ours.last_layer_parameters()] == [(40, 8)]  # the norm is not trainable


def test_features_with_no_mask_are_the_backbone_features_and_masks_change_only_through_the_token():
    bb = _backbone()
    net = SSLNet(bb, dict(out_dim=12, hidden_dim=16, bottleneck_dim=8), ibot=True).eval()
    x = torch.randn(3, 3, 32, 32)
    cls, patches = net.features(x)
    ref = bb.forward_features(x)
    assert torch.allclose(cls, ref[:, 0], atol=1e-6) and torch.allclose(
        patches, ref[:, bb.num_prefix_tokens :], atol=1e-6
    )
    none = torch.zeros(3, 4, dtype=torch.bool)
    assert torch.allclose(net.features(x, none)[1], patches, atol=1e-6)
    masks = none.clone()
    masks[0, 1] = True
    cls_m, patches_m = net.features(x, masks)
    assert torch.allclose(cls_m[1:], cls[1:], atol=1e-6) and not torch.allclose(cls_m[0], cls[0], atol=1e-4)
    # a masked image looks the same whatever its masked patch held
    y = x.clone()
    y[0, :, :16, 16:] = 5.0  # patch (0, 1)
    assert torch.allclose(net.features(y, masks)[0][0], cls_m[0], atol=1e-5)
    out = net(x, torch.randn(6, 3, 16, 16), masks)
    assert out["global_logits"].shape == (3, 12) and out["local_logits"].shape == (6, 12)
    assert out["patch_logits"].shape == (1, 12)
    t_logits, t_patch = net.teacher(x, masks)
    assert torch.allclose(t_patch, net.dino_head(patches[masks]), atol=1e-6)  # the teacher sees no mask
    assert torch.allclose(t_logits, net.dino_head(cls), atol=1e-6)


def test_cnn_backbones_refuse_ibot_but_work_without():
    from cxrbench.common.errors import InputError

    cnn = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    with pytest.raises(InputError, match="--no-ibot"):
        SSLNet(cnn, dict(out_dim=8, hidden_dim=8, bottleneck_dim=4), ibot=True)
    net = SSLNet(cnn, dict(out_dim=8, hidden_dim=8, bottleneck_dim=4), ibot=False)
    out = net(torch.randn(2, 3, 64, 64), torch.randn(4, 3, 32, 32))
    assert out["global_logits"].shape == (2, 8) and "patch_logits" not in out


def test_ema_update_moves_the_teacher_towards_the_student():
    net = SSLNet(_backbone(), dict(out_dim=12, hidden_dim=16, bottleneck_dim=8), ibot=True)
    teacher = copy.deepcopy(net)
    teacher.mask_token = None
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, net, 0.9)
    student = dict(net.named_parameters())
    for n, p in teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * student[n], atol=1e-6), n
    assert "mask_token" not in dict(teacher.named_parameters())
    ema_update(teacher, net, 1.0)  # momentum 1: frozen
    ema_update(teacher, net, 0.0)  # momentum 0: a copy
    assert all(torch.allclose(p, student[n]) for n, p in teacher.named_parameters())
