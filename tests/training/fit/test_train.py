"""End to end: a tiny train() run writes loadable checkpoints, resumes, trains on partial labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.data.labels import IGNORE, NUM_CLASSES
from training.fit.train import TrainConfig, TrainError, train
from training.model.checkpoint import CheckpointError, load_checkpoint


def _cfg(**kw):
    base = dict(preset="tiny", epochs=1, iterations_per_epoch=2, batch_size=1, threads=1, val_every=1,
                tensorboard=True)
    base.update(kw)
    return TrainConfig(**base)


def test_train_checkpoint_and_resume(synth_dataset, tmp_path):
    subs = synth_dataset.with_labels()
    out = tmp_path / "run"
    res = train(_cfg(), subs[:2], out, val_subjects=subs[2:3], progress=False)
    assert res.epochs_completed == 1 and res.best_path.is_file() and res.last_path.is_file()
    assert res.best_metric is not None and 0.0 <= res.best_metric <= 1.0
    ck = load_checkpoint(res.last_path)
    assert ck.epoch == 1 and not ck.model.training
    assert ck.network.preset == "tiny" and ck.preprocess.modalities == ("T2w",)
    assert ck.train_config["optimizer"] == "adamw" and ck.train_config["preset"] == "tiny"
    assert [c["value"] for c in ck.class_table][:NUM_CLASSES] == list(range(NUM_CLASSES))
    assert ck.version["labels"] and "val_tissue_dice" in ck.metrics
    assert "optimizer" in ck.raw and "scheduler" in ck.raw
    x = torch.randn(1, 1, *ck.network.patch_size)
    with torch.no_grad():
        assert ck.model(x).shape == (1, NUM_CLASSES, *ck.network.patch_size)
    assert any((out / "tensorboard").iterdir())
    # resume: continues at the saved epoch, finishes the remaining one
    res2 = train(_cfg(epochs=2, resume=True), subs[:2], out, val_subjects=subs[2:3], progress=False)
    assert [h["epoch"] for h in res2.history] == [1, 2]
    ck2 = load_checkpoint(res2.last_path)
    assert ck2.epoch == 2
    assert not torch.equal(ck2.raw["state_dict"]["output_block.conv.conv.weight"],
                           ck.raw["state_dict"]["output_block.conv.conv.weight"])
    assert json.loads((out / "history.json").read_text())[-1]["epoch"] == 2


def test_train_on_partial_labels_only_uses_planned_subjects(synth_dataset, tmp_path):
    from training.data.nifti import load_volume

    subs = synth_dataset.with_labels()
    full = load_volume(subs[0].label).data.astype(np.uint8)
    partial = np.full_like(full, IGNORE)
    partial[:, :, full.shape[2] // 2] = full[:, :, full.shape[2] // 2]
    res = train(_cfg(), subs[:3], tmp_path / "p", partial_labels={subs[0].id: partial}, progress=False)
    assert res.n_train == 1 and res.best_metric is None and res.best_path.is_file()
    with pytest.raises(TrainError, match="no annotated voxel"):
        train(_cfg(), subs[:1], tmp_path / "q", partial_labels={subs[0].id: np.full_like(full, IGNORE)},
              progress=False)
    with pytest.raises(TrainError, match="no trainable subject"):
        train(_cfg(), subs[:1], tmp_path / "r", partial_labels={}, progress=False)


def test_load_checkpoint_rejects_other_files(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "missing.pt")


def test_a_short_run_learns_beyond_the_untrained_network(synth_dataset, tmp_path):
    """120 iterations of the tiny preset must clearly beat its own initial weights on a held-out subject.

    Measured (2 threads, lr 1e-2, 4 × 30 iterations, train on 5 subjects, test on the 6th): tissue Dice
    0.026 → 0.262 at seed 0 (+0.236); seeds 2–5 gain +0.23 to +0.26. Seed 1 gains only +0.07 (CSF and
    cortical grey matter not yet predicted), so the seed is fixed; the margin leaves room for numerics.
    """
    from training.fit.train import load_cases, validate
    from training.model.network import build_network

    subs = synth_dataset.with_labels()
    train_subs, held_out = subs[:-1], subs[-1:]
    cfg = TrainConfig(preset="tiny", epochs=4, iterations_per_epoch=30, batch_size=2, lr=1e-2, threads=2, seed=0,
                      tensorboard=False)
    res = train(cfg, train_subs, tmp_path / "learn", progress=False)
    ck = load_checkpoint(res.last_path)
    torch.manual_seed(cfg.seed)  # the Trainer seeds, then initialises: the same untrained weights
    untrained = build_network(ck.network)
    case = load_cases(held_out, ck.preprocess, max_candidates=1)
    patch, cpu = tuple(ck.network.patch_size), torch.device("cpu")
    before = validate(untrained, case, patch, cpu)["tissue_dice"]
    after = validate(ck.model, case, patch, cpu)["tissue_dice"]
    assert after > before + 0.15, (before, after)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
