"""Masked Dice+CE: sees only annotated voxels, finite when nothing is annotated, deep supervision."""

from __future__ import annotations

import torch

from training.data.labels import IGNORE
from training.fit.loss import MaskedDiceCELoss, deep_supervision_weights


def _partial(shape=(2, 12, 12, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    full = torch.randint(0, 10, shape, generator=g)
    partial = torch.full_like(full, IGNORE)
    partial[:, :, :, 3] = full[:, :, :, 3]
    partial[:, :, :, 8] = full[:, :, :, 8]
    return full, partial


def _loss_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    loss = loss_fn(x, target)
    loss.backward()
    return loss.detach(), x.grad


def test_logits_in_ignored_voxels_change_nothing():
    torch.manual_seed(0)
    _, partial = _partial()
    loss_fn = MaskedDiceCELoss()
    logits = torch.randn(2, 10, 12, 12, 12)
    other = logits.clone()
    ign = (partial == IGNORE).unsqueeze(1).expand_as(other)
    other[ign] = torch.randn(int(ign.sum())) * 10
    l1, g1 = _loss_and_grad(loss_fn, logits, partial)
    l2, g2 = _loss_and_grad(loss_fn, other, partial)
    assert torch.allclose(l1, l2, atol=1e-6)
    assert torch.allclose(g1, g2, atol=1e-7)
    assert torch.all(g1[ign] == 0)
    # the channel-first label form (B, 1, …) gives the same loss
    assert torch.allclose(loss_fn(logits, partial[:, None]), l1)


def test_nothing_annotated_is_finite_zero_with_zero_gradients():
    loss_fn = MaskedDiceCELoss()
    target = torch.full((2, 8, 8, 8), IGNORE)
    for logits in (torch.randn(2, 10, 8, 8, 8), torch.randn(2, 2, 10, 8, 8, 8)):
        loss, grad = _loss_and_grad(loss_fn, logits, target)
        assert torch.isfinite(loss) and float(loss) == 0.0
        assert torch.all(grad == 0)


def test_full_label_matches_monai_dice_ce():
    from monai.losses import DiceCELoss

    full, _ = _partial()
    logits = torch.randn(2, 10, 12, 12, 12)
    ours = MaskedDiceCELoss()(logits, full)
    ref = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, full[:, None])
    present = len(torch.unique(full)) == 10
    assert present and torch.allclose(ours, ref, atol=1e-5)


def test_deep_supervision_heads_keep_the_ignore_region():
    """Every head is scored at full resolution against the same partial label: a single annotated
    slice reaches every head (it cannot vanish at coarse scale) and ignored voxels stay ignored."""
    torch.manual_seed(1)
    full, _ = _partial()
    partial = torch.full_like(full, IGNORE)
    partial[:, :, :, 5] = full[:, :, :, 5]  # one thin annotated slice
    loss_fn = MaskedDiceCELoss()
    # heads as DynUNet returns them: stacked (B, heads, C, …), coarse ones nearest-upsampled
    coarse = torch.randn(2, 10, 3, 3, 3)
    up = torch.nn.functional.interpolate(coarse, size=(12, 12, 12))
    stacked = torch.stack([torch.randn(2, 10, 12, 12, 12), torch.randn(2, 10, 12, 12, 12), up], dim=1)
    loss, grad = _loss_and_grad(loss_fn, stacked, partial)
    for h in range(3):
        assert grad[:, h].abs().sum() > 0  # each head learns from the thin slice
        ign = (partial == IGNORE).unsqueeze(1).expand(-1, 10, -1, -1, -1)
        assert torch.all(grad[:, h][ign] == 0)
    changed = stacked.clone()
    changed[:, 2][(partial == IGNORE).unsqueeze(1).expand(-1, 10, -1, -1, -1)] += 5.0
    assert torch.allclose(loss_fn(changed, partial), loss, atol=1e-6)
    # weights 1/2^i normalised
    w = deep_supervision_weights(3)
    assert abs(sum(w) - 1) < 1e-9 and w[0] == 2 * w[1] == 4 * w[2]
    parts = [MaskedDiceCELoss()(stacked[:, h], partial) for h in range(3)]
    assert torch.allclose(loss, sum(wi * p for wi, p in zip(w, parts, strict=True)), atol=1e-6)
