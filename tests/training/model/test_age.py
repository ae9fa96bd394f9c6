"""AgeU-Net: head on the bottleneck, loss = seg + α·MSE, window-averaged age, checkpoints, MAE/MSE."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.data.labels import IGNORE, NUM_CLASSES
from training.fit.age import AgeTraining
from training.fit.loss import MaskedDiceCELoss
from training.infer.age import predict_age
from training.model.age import (
    AGE_MEAN_WEEKS,
    AGE_SD_WEEKS,
    AgeError,
    forward_with_age,
    normalise_age,
    weeks_from_normalised,
)
from training.model.network import build_network, network_config


def _nets():
    torch.manual_seed(0)
    cfg = network_config("tiny")
    plain = build_network(cfg)
    cfg_age = network_config("tiny")
    cfg_age.age_head = True
    aged = build_network(cfg_age)
    missing, unexpected = aged.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("age_head.") for k in missing)
    return cfg_age, plain, aged


SMALL = (16, 16, 16)  # any multiple of the total stride (8) works; small keeps the tests fast


def test_head_shape_and_segmentation_unchanged():
    cfg, plain, aged = _nets()
    x = torch.randn(3, 1, *SMALL)
    plain.eval(), aged.eval()
    with torch.no_grad():
        seg, age = forward_with_age(aged, x)
        assert age.shape == (3,) and age.dtype == torch.float32
        assert torch.equal(seg, plain(x)) and seg.shape == (3, NUM_CLASSES, *SMALL)
        assert torch.equal(aged(x), seg)  # plain forward still returns the segmentation only
        assert aged.age_head.last is None  # ... and does not run the head unless asked
    aged.train()
    seg_t, age_t = forward_with_age(aged, x)
    assert seg_t.ndim == 6 and age_t.shape == (3,) and age_t.requires_grad
    with pytest.raises(AgeError):
        forward_with_age(plain, x)


def test_loss_is_seg_plus_alpha_mse_exactly():
    cfg, _, aged = _nets()
    aged.train()
    x = torch.randn(2, 1, *SMALL)
    y = torch.full((2, 1, *SMALL), IGNORE, dtype=torch.uint8)
    y[..., 10] = 3
    ages = [29.5, 43.0, 37.0]
    batch = {"case": torch.tensor([2, 0])}
    for alpha in (0.01, 0.0, 0.5):
        term = AgeTraining(aged, ages, alpha)
        seg_out = aged(x)
        pred = aged.age_head.last.detach().clone()
        seg = MaskedDiceCELoss()(seg_out, y)
        total = term(seg, batch)
        target = torch.tensor([(37.0 - 40.0) / 5.0, (29.5 - 40.0) / 5.0])
        mse = ((pred - target) ** 2).mean()
        assert torch.allclose(total, seg + alpha * mse, rtol=0, atol=1e-6)
        assert abs(term.epoch_mse() - float(mse)) < 1e-6
        if alpha == 0.0:
            assert torch.equal(total, seg)
        total.backward()
        assert aged.age_head.fc.weight.grad is not None
        aged.zero_grad()
    assert normalise_age(AGE_MEAN_WEEKS) == 0 and weeks_from_normalised(1.0) == AGE_MEAN_WEEKS + AGE_SD_WEEKS


def test_window_average_and_padding():
    cfg, _, aged = _nets()
    p = SMALL
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, *p, generator=g), torch.randn(1, *p, generator=g) * 2
    pa, pb = predict_age(aged, a, p), predict_age(aged, b, p)
    vol = torch.cat([a, b], dim=1)  # two windows along x, no overlap
    assert math.isclose(predict_age(aged, vol, p, overlap=0.0), (pa + pb) / 2, rel_tol=0, abs_tol=1e-4)
    small = torch.randn(1, p[0] - 6, p[1], p[2] - 3, generator=g)  # smaller than a window: padded
    assert np.isfinite(predict_age(aged, small.numpy(), p))
    with pytest.raises(AgeError):
        predict_age(aged, torch.randn(p), p)


def test_age_training_checkpoint_and_evaluation(synth_dataset, tmp_path):
    from training.evaluate.age import evaluate_age_checkpoint
    from training.fit.train import TrainConfig, train
    from training.model.checkpoint import load_checkpoint

    subs = synth_dataset.with_labels()
    cfg = TrainConfig(preset="tiny", patch_size=(16, 16, 16), epochs=1, iterations_per_epoch=2, batch_size=2,
                      threads=2, tensorboard=False, age_head=True, age_weight=0.01)
    res = train(cfg, subs[:2], tmp_path / "age", progress=False)
    assert np.isfinite(res.history[-1]["age_mse_normalised"])
    ck = load_checkpoint(res.best_path)
    assert ck.network.age_head and hasattr(ck.model, "age_head")
    rep = evaluate_age_checkpoint(res.best_path, subs[2:4])
    assert len(rep.subjects) == 2
    errs = np.array([s["pred"] - s["true"] for s in rep.subjects])
    assert math.isclose(rep.mae, float(np.abs(errs).mean()), rel_tol=1e-9)
    assert math.isclose(rep.mse, float((errs ** 2).mean()), rel_tol=1e-9)
    assert "MAE" in rep.to_text()
    # a segmentation-only checkpoint fine-tunes into an AgeU-Net (the new head starts random)
    from training.fit.finetune import prepare_finetune
    from training.model.checkpoint import save_checkpoint

    seg_cfg = replace(ck.network, age_head=False)
    seg_path = save_checkpoint(tmp_path / "seg.pt", build_network(seg_cfg), network=seg_cfg, preprocess=ck.preprocess,
                               train_config={}, epoch=0, metrics={})
    aged = build_network(ck.network)
    head_before = aged.age_head.fc.weight.detach().clone()
    rep_ft = prepare_finetune(aged, seg_path, "shallow", ck.network)
    assert "age_head" in rep_ft.trained_modules and torch.equal(aged.age_head.fc.weight, head_before)
    with pytest.raises(AgeError, match="no age head"):
        evaluate_age_checkpoint(seg_path, subs[2:3])
