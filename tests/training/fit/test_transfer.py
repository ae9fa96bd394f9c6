"""Transfer learning: freeze levels by network structure, fine-tuning through train(), the age split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.labels import IGNORE
from training.data.splits import SplitError, age_split, group_sizes
from training.fit.finetune import apply_freeze, trainable_parameters
from training.fit.freeze import FREEZE_LEVELS, FreezeError
from training.fit.loss import MaskedDiceCELoss
from training.model.network import build_network, network_config


def _expected_trained(model, level: str) -> set[int]:
    """ids of the modules that must train, derived independently from DynUNet's attribute lists."""
    enc = [model.input_block, *model.downsamples]
    n_levels = len(enc) + 1
    dec = {i: model.upsamples[n_levels - 2 - i] for i in range(len(enc))}
    heads = {i + 1: h for i, h in enumerate(model.deep_supervision_heads)}
    max_d = {"shallow": 1, "medium": 2, "deep": 3, "full": 99, "scratch": 99, "none": -1}[level]
    mods = [model.bottleneck] if max_d >= 0 else []
    if max_d >= 0 and hasattr(model, "age_head"):
        mods.append(model.age_head)
    for i in range(len(enc)):
        if n_levels - 1 - i <= max_d:
            mods += [enc[i], dec[i]] + ([heads[i]] if i in heads else []) + ([model.output_block] if i == 0 else [])
    return {id(p) for m in mods for p in m.parameters()}


SMALL = (16, 16, 16)  # the tiny (4-level, deep-supervised) network accepts any multiple of 8: keep steps cheap


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, *SMALL, generator=g)
    full = torch.randint(0, 10, (2, 1, *SMALL), generator=g)
    y = torch.full_like(full, IGNORE)
    y[..., ::5] = full[..., ::5]  # partial label: every 5th axial slice annotated
    return x, y.to(torch.uint8)


@pytest.mark.parametrize(("level", "opt_name"), [("shallow", "adamw"), ("shallow", "sgd"), ("medium", "adamw"),
                                                  ("deep", "sgd"), ("full", "adamw"), ("none", "sgd")])
def test_freeze_level_trains_exactly_the_intended_modules(level, opt_name):
    from training.fit.age import age_loss
    from training.model.age import forward_with_age

    torch.manual_seed(0)
    cfg = network_config("tiny")
    cfg.age_head = True  # the age head trains with the bottleneck
    model = build_network(cfg).train()
    report = apply_freeze(model, level)
    expected = _expected_trained(model, level)
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if id(p) in expected)
    assert report.trainable_params + report.frozen_params == sum(p.numel() for p in model.parameters())
    params = trainable_parameters(model)
    assert {id(p) for p in params} == expected  # frozen parameters never reach the optimiser
    if level == "none":
        assert not params and report.trained_modules == []
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = (torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1) if opt_name == "adamw"
           else torch.optim.SGD(params, lr=1e-2, momentum=0.99, nesterov=True, weight_decay=0.1))
    loss_fn = MaskedDiceCELoss()
    for step in range(2):  # two steps: momentum/decay state exists on the second
        x, y = _batch(step)
        opt.zero_grad(set_to_none=True)
        seg, age = forward_with_age(model, x)
        loss, _ = age_loss(loss_fn(seg, y), age, torch.tensor([30.0, 44.0]))
        assert float(loss.detach()) > 0
        loss.backward()
        opt.step()
    for n, p in model.named_parameters():
        if id(p) in expected:
            assert not torch.equal(p, before[n]), f"{level}: {n} should have trained"
        else:
            assert torch.equal(p, before[n]), f"{level}: {n} should be frozen"


def test_paper_preset_levels_grow_and_deep_keeps_the_outer_levels_frozen():
    model = build_network(network_config("paper"))
    counts = [apply_freeze(model, lv).trainable_params for lv in ("none", "shallow", "medium", "deep", "full")]
    assert counts[0] == 0 and counts == sorted(counts) and len(set(counts)) == 5
    rep = apply_freeze(model, "deep")
    assert {id(p) for p in model.parameters() if p.requires_grad} == _expected_trained(model, "deep")
    assert not any(p.requires_grad for p in model.input_block.parameters())
    assert not any(p.requires_grad for p in model.output_block.parameters())
    assert rep.frozen_params > 0


def test_freeze_errors():
    model = build_network(network_config("tiny"))
    with pytest.raises(FreezeError, match="unknown freeze level"):
        apply_freeze(model, "half")
    model.extra = torch.nn.Linear(2, 2)  # a parameter outside the U-Net structure
    with pytest.raises(FreezeError, match="outside the U-Net"):
        apply_freeze(model, "shallow")
    with pytest.raises(FreezeError, match="no DynUNet structure"):
        apply_freeze(torch.nn.Sequential(torch.nn.Linear(2, 2)), "shallow")
    assert set(FREEZE_LEVELS) == {"none", "shallow", "medium", "deep", "full", "scratch"}


def _tcfg(**kw):
    from training.fit.train import TrainConfig

    base = dict(preset="tiny", patch_size=(16, 16, 16), epochs=1, iterations_per_epoch=2, batch_size=1, threads=2,
                tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def test_finetune_through_train_on_partial_labels(synth_dataset, tmp_path):
    from training.data.nifti import load_volume
    from training.fit.train import TrainError, train
    from training.model.checkpoint import load_checkpoint

    subs = synth_dataset.with_labels()
    src = train(_tcfg(), subs[:2], tmp_path / "src", progress=False)
    init = load_checkpoint(src.best_path).raw["state_dict"]
    full = load_volume(subs[3].label).data.astype(np.uint8)
    partial = np.full_like(full, IGNORE)
    partial[:, :, ::4] = full[:, :, ::4]
    res = train(_tcfg(freeze="shallow"), subs, tmp_path / "ft", partial_labels={subs[3].id: partial},
                init=src.best_path, progress=False)
    ck = load_checkpoint(res.last_path)
    tuned = ck.raw["state_dict"]
    assert ck.train_config["freeze"] == "shallow" and ck.train_config["freeze_report"]["frozen_params"] > 0
    model = build_network(ck.network)
    apply_freeze(model, "shallow")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for k in init:
        if k in trained:
            assert not torch.equal(tuned[k], init[k]), k
        elif k.startswith(("input_block", "output_block")):
            assert torch.equal(tuned[k], init[k]), k
    # "none": the init weights are published unchanged; no training happens
    res0 = train(_tcfg(freeze="none"), subs[:1], tmp_path / "none", init=src.best_path, progress=False)
    assert res0.epochs_completed == 0
    st0 = load_checkpoint(res0.best_path).raw["state_dict"]
    assert all(torch.equal(st0[k], init[k]) for k in init)
    for kw, match in [({"freeze": "scratch"}, "scratch"), ({"freeze": "bogus"}, "unknown freeze level")]:
        with pytest.raises(TrainError, match=match):
            train(_tcfg(**kw), subs[:1], tmp_path / "bad", init=src.best_path, progress=False)
    with pytest.raises(TrainError, match="needs an init"):
        train(_tcfg(freeze="medium"), subs[:1], tmp_path / "bad2", progress=False)


# ---------------------------------------------------------------- age split


def _ages(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f"sub-{k:03d}": float(rng.uniform(26.7, 45.1)) for k in range(n)}


def test_split_paper_sizes_oldest_source_and_disjoint():
    ages = _ages(709)
    sp = age_split(ages, seed=3)
    src, tr, te = sp["source"], sp["target_train"], sp["target_test"]
    assert (len(src), len(tr), len(te)) == (100, 40, 80) and not sp["scaled"]
    assert not (set(src) & set(tr)) and not (set(src) & set(te)) and not (set(tr) & set(te))
    assert len(sp["unused"]) == 709 - 220 and not (set(sp["unused"]) & (set(src) | set(tr) | set(te)))
    young = sorted(ages.values())[:120]
    assert sorted(ages[i] for i in tr + te) == young
    assert min(ages[i] for i in src) >= max(ages[i] for i in sp["unused"]) >= max(young)
    assert sp["ages"]["source"]["min"] >= sp["ages"]["target_test"]["max"]


def test_split_is_deterministic_and_order_independent():
    ages = _ages(50, seed=1)
    a = age_split(ages, seed=7)
    b = age_split(dict(reversed(list(ages.items()))), seed=7)
    assert a == b
    c = age_split(ages, seed=8)
    assert c["source"] == a["source"] and set(c["target_train"] + c["target_test"]) == set(
        a["target_train"] + a["target_test"])
    assert c["target_train"] != a["target_train"]  # the seed draws another fine-tuning subset


def test_split_scales_down_and_rejects_too_few():
    assert group_sizes(22) == (10, 4, 8)
    assert group_sizes(220) == (100, 40, 80)
    src, tr, te = group_sizes(33)
    assert src + tr + te == 33 and abs(src / 33 - 100 / 220) < 0.05 and tr < te
    ages = _ages(3)
    sp = age_split({**ages, "x-noage": None})
    assert (len(sp["source"]), len(sp["target_train"]), len(sp["target_test"])) == (1, 1, 1)
    assert sp["no_age"] == ["x-noage"] and sp["scaled"]
    with pytest.raises(SplitError, match="too few"):
        age_split(_ages(2))
    with pytest.raises(SplitError, match="duplicate"):
        age_split([("a", 30.0), ("a", 31.0), ("b", 40.0)])


def test_cli_freeze_and_age_options(synth_root, synth_dataset, tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.commands.evaluate import evaluate
    from apps.commands.train import train as train_cmd
    from training.data.preprocess import PreprocessConfig
    from training.model.checkpoint import load_checkpoint, save_checkpoint

    tcli, ecli = typer.Typer(), typer.Typer()
    tcli.command()(train_cmd)
    ecli.command()(evaluate)
    cfg = network_config("tiny", patch_size=(16, 16, 16))
    cfg.age_head = True
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "src.pt", build_network(cfg), network=cfg, preprocess=PreprocessConfig(),
                           train_config={}, epoch=3, metrics={})
    common = [str(synth_root), "--preset", "tiny", "--epochs", "1", "--no-progress", "--init", str(ckpt)]
    res = CliRunner().invoke(tcli, [*common, "--out", str(tmp_path / "bad"), "--freeze", "bogus"])
    assert res.exit_code != 0 and "unknown freeze level" in res.output
    res = CliRunner().invoke(tcli, [*common, "--out", str(tmp_path / "none"), "--freeze", "none", "--age-head"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(tmp_path / "none" / "best.pt")
    assert ck.train_config["freeze"] == "none" and ck.train_config["age_head"] and ck.network.age_head
    one = synth_dataset.with_labels()[0].id
    res = CliRunner().invoke(ecli, [str(tmp_path / "none" / "best.pt"), str(synth_root), "--no-hd95", "--subjects",
                                    one, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "scan age" in res.output and "MAE" in res.output
