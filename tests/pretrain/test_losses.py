"""pretrain.losses against lightly's implementations and slow loops (each piece of the DINOv2 recipe)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrbench.pretrain.losses import (
    Center,
    SSLObjective,
    dino_loss,
    entropy,
    ibot_loss,
    koleo_loss,
    sinkhorn_knopp,
)

lightly_loss = pytest.importorskip("lightly.loss", reason="lightly (dev dependency) is the reference")


def _views(n_views, b=6, k=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, k, generator=g, dtype=torch.float64) * 3 for _ in range(n_views)]


def test_dino_loss_matches_lightly_and_a_slow_loop():
    teacher_logits = _views(2, seed=1)
    student_logits = _views(2 + 4, seed=2)  # 2 global + 4 local views
    center = Center(32, momentum=0.9).double()
    center.center.copy_(torch.randn(1, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    temp = 0.05
    probs = [center.probs(t, temp).double() for t in teacher_logits]
    ours = dino_loss(student_logits, probs, student_temp=0.1)

    ref = lightly_loss.DINOLoss(output_dim=32, warmup_teacher_temp=temp, teacher_temp=temp, student_temp=0.1)
    ref.center.copy_(center.center.view(1, 1, 32).float())
    theirs = ref([t.float() for t in teacher_logits], [s.float() for s in student_logits], teacher_temp=temp)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)

    total, pairs = 0.0, 0  # the slow reference: every (student view, other teacher view) pair, every image
    for si, s in enumerate(student_logits):
        for ti, t in enumerate(teacher_logits):
            if si == ti:
                continue
            for i in range(s.shape[0]):
                p = np.exp((t[i] - center.center[0]).numpy() / temp)
                p /= p.sum()
                logq = s[i].numpy() / 0.1 - np.log(np.exp(s[i].numpy() / 0.1).sum())
                total += -(p * logq).sum() / s.shape[0]
            pairs += 1
    assert pairs == 2 + 2 * 4
    assert float(ours) == pytest.approx(total / pairs, rel=1e-10)


def test_center_update_matches_lightly():
    logits = _views(2, seed=4)
    center = Center(32, momentum=0.9)
    center.update(torch.cat(logits).float())
    ref = lightly_loss.DINOLoss(output_dim=32, center_momentum=0.9)
    ref.update_center(torch.stack([t.float() for t in logits]))
    assert torch.allclose(center.center, ref.center.view(1, 32), atol=1e-6)
    before = center.center.clone()
    center.update(torch.zeros((0, 32)))  # no rows anywhere: the center stays
    assert torch.equal(center.center, before)


def test_sinkhorn_matches_lightly_and_equipartitions():
    from lightly.loss.swav_loss import sinkhorn as swav_sinkhorn

    logits = torch.randn(40, 16, generator=torch.Generator().manual_seed(5)).double()
    ours = sinkhorn_knopp(logits, temp=0.1, n_iter=3)
    theirs = swav_sinkhorn(logits.clone(), iterations=3, epsilon=0.1)
    assert torch.allclose(ours, theirs, atol=1e-10)
    assert torch.allclose(
        ours.sum(dim=1), torch.ones(40, dtype=torch.float64), atol=1e-10
    )  # targets per image
    many = sinkhorn_knopp(logits, temp=0.1, n_iter=200)
    assert torch.allclose(many.sum(dim=0), torch.full((16,), 40 / 16, dtype=torch.float64), atol=1e-6)
    shifted = sinkhorn_knopp(logits + 1000.0, temp=0.1, n_iter=3)  # exp(1e4) would overflow: shift-invariant
    assert torch.isfinite(shifted).all() and torch.allclose(shifted, ours, atol=1e-10)
    assert sinkhorn_knopp(torch.zeros((0, 16)), temp=0.1).shape == (0, 16)


def test_ibot_loss_matches_lightly():
    g = torch.Generator().manual_seed(6)
    masks = torch.rand(5, 3, 3, generator=g) < 0.4
    masks[0] = False  # an image without a masked patch counts 0
    m = int(masks.sum())
    teacher, student = torch.randn(m, 24, generator=g), torch.randn(m, 24, generator=g)
    center = Center(24)
    ours = ibot_loss(student, center.probs(teacher, 0.04), masks.view(5, 9), student_temp=0.1)
    theirs = lightly_loss.IBOTPatchLoss(output_dim=24, teacher_temp=0.04, student_temp=0.1)(
        teacher, student, masks
    )
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    slow = 0.0
    probs = F.softmax(teacher / 0.04, dim=-1)
    logq = F.log_softmax(student / 0.1, dim=-1)
    row = 0
    for img in range(5):
        n = int(masks[img].sum())
        if n:
            slow += float(-(probs[row : row + n] * logq[row : row + n]).sum()) / n
        row += n
    assert float(ours) == pytest.approx(slow / 5, rel=1e-5)
    empty = torch.zeros((0, 24), requires_grad=True)
    out = ibot_loss(empty, torch.zeros((0, 24)), torch.zeros((5, 9), dtype=torch.bool))
    assert float(out.detach()) == 0.0 and out.requires_grad  # stays in the graph for DDP


def test_koleo_matches_lightly_and_brute_force():
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(7)).double()
    ours = koleo_loss(x)
    theirs = lightly_loss.KoLeoLoss()(x.float())
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    z = (x / x.norm(dim=1, keepdim=True)).numpy()
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert float(ours) == pytest.approx(-np.log(d.min(axis=1) + 1e-8).mean(), rel=1e-6)
    spread = koleo_loss(torch.eye(8).double())
    clumped = koleo_loss(torch.eye(8).double() + 5.0)
    assert float(spread) < float(clumped)  # the regularizer prefers spread-out features


def test_entropy_of_one_hot_and_uniform():
    assert float(entropy(torch.eye(4))) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy(torch.full((3, 8), 1 / 8))) == pytest.approx(math.log(8), rel=1e-6)


def test_objective_combines_the_weighted_parts_and_moves_the_centers():
    g = torch.Generator().manual_seed(8)
    b, k, n_local = 4, 16, 2
    masks = torch.rand(2 * b, 6, generator=g) < 0.5
    student = {
        "global_logits": torch.randn(2 * b, k, generator=g),
        "local_logits": torch.randn(n_local * b, k, generator=g),
        "global_feats": torch.randn(2 * b, 8, generator=g),
        "patch_logits": torch.randn(int(masks.sum()), k, generator=g),
    }
    t_logits, t_patch = torch.randn(2 * b, k, generator=g), torch.randn(int(masks.sum()), k, generator=g)
    obj = SSLObjective(
        k, 2, n_local, "center", 0.9, 3, 0.1, dino_weight=1.0, ibot_weight=0.5, koleo_weight=0.1
    )
    out = obj(student, t_logits, t_patch, masks, temp=0.04)
    assert float(out["loss"]) == pytest.approx(
        float(out["dino"] + 0.5 * out["ibot"] + 0.1 * out["koleo"]), rel=1e-6
    )
    assert torch.allclose(obj.dino_center.center, 0.1 * t_logits.mean(dim=0, keepdim=True), atol=1e-6)
    assert torch.allclose(obj.ibot_center.center, 0.1 * t_patch.mean(dim=0, keepdim=True), atol=1e-6)
    expected_koleo = sum(float(koleo_loss(f)) for f in student["global_feats"].chunk(2))
    assert float(out["koleo"]) == pytest.approx(expected_koleo, rel=1e-6)

    sk = SSLObjective(k, 2, n_local, "sinkhorn", koleo_weight=0.0, ibot=False)
    out = sk(student, t_logits, None, None, temp=0.04)
    assert float(out["ibot"]) == 0.0 and float(out["koleo"]) == 0.0
    assert torch.equal(sk.dino_center.center, torch.zeros(1, k))  # Sinkhorn-Knopp keeps no center
    assert set(sk.state_dict()) == {"dino_center.center"}
