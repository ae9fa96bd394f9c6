"""Network presets: nnU-Net style kernels/strides and DynUNet outputs."""

from __future__ import annotations

import pytest
import torch

from training.data.labels import NUM_CLASSES
from training.model.network import NetworkConfigError, build_network, kernels_strides, network_config


def test_paper_preset_matches_the_paper():
    cfg = network_config("paper")
    assert cfg.patch_size == (128, 128, 128) and cfg.levels == 6
    assert cfg.filters == (32, 64, 128, 256, 320, 320)
    size = 128
    for s in cfg.strides:
        size //= s[0]
    assert size == 4  # bottleneck 4³
    assert cfg.deep_supervision and cfg.deep_supr_num == 3 and cfg.res_block


def test_anisotropic_spacing_gives_anisotropic_strides():
    kernels, strides = kernels_strides((64, 64, 32), (0.5, 0.5, 1.5))
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]


def test_tiny_network_outputs_and_unknown_preset():
    cfg = network_config("tiny", in_channels=2)
    net = build_network(cfg)
    x = torch.randn(1, 2, *cfg.patch_size)
    net.train()
    out = net(x)
    assert out.shape == (1, 1 + cfg.deep_supr_num, NUM_CLASSES, *cfg.patch_size)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, NUM_CLASSES, *cfg.patch_size)
    with pytest.raises(NetworkConfigError):
        network_config("huge")
    with pytest.raises(NetworkConfigError):
        network_config("cpu", patch_size=(50, 48, 48))


def _shared_names(model: torch.nn.Module) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for k, v in model.state_dict().items():
        if v.numel():
            groups.setdefault(v.data_ptr(), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def test_checkpoint_state_stores_shared_weights_once():
    """DynUNet lists its skip layers under two names; the checkpoint state must keep them one tensor."""
    from training.model.checkpoint import cpu_state_dict

    net = build_network(network_config("tiny"))
    shared = _shared_names(net)
    assert shared, "DynUNet is expected to register its skip layers under two names"
    state = cpu_state_dict(net)
    assert state.keys() == net.state_dict().keys()
    for names in shared:
        assert all(state[n] is state[names[0]] for n in names)
    for k, v in net.state_dict().items():
        assert torch.equal(state[k], v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the duplicate copies came from .cpu() per name")
def test_checkpoint_of_a_cuda_model_is_not_larger(tmp_path):
    from training.data.preprocess import PreprocessConfig
    from training.model.checkpoint import save_checkpoint

    cfg = network_config("tiny")
    net = build_network(cfg)
    kw = dict(network=cfg, preprocess=PreprocessConfig(), train_config={}, epoch=0, metrics={})
    cpu_file = save_checkpoint(tmp_path / "cpu.pt", net, **kw)
    gpu_file = save_checkpoint(tmp_path / "gpu.pt", net.cuda(), **kw)
    assert gpu_file.stat().st_size <= cpu_file.stat().st_size * 1.01


def test_a_copy_with_a_generation_keeps_the_model_and_tells_its_generation(tmp_path):
    from training.data.preprocess import PreprocessConfig
    from training.infer.predictor import Predictor
    from training.model.checkpoint import (
        CheckpointError,
        checkpoint_generation,
        copy_with_generation,
        load_checkpoint,
        save_checkpoint,
    )

    torch.manual_seed(0)
    cfg = network_config("tiny")
    src = save_checkpoint(tmp_path / "new.pt", build_network(cfg), network=cfg, preprocess=PreprocessConfig(),
                          train_config={"seed": 1}, epoch=3, metrics={}, extra={"note": "kept"})
    assert checkpoint_generation(src) == 0  # nothing stored: a first or an imported model
    out = copy_with_generation(src, tmp_path / "served.pt", 4)
    a, b = load_checkpoint(src), load_checkpoint(out)
    assert b.generation == 4 and checkpoint_generation(out) == 4 and b.raw["extra"]["note"] == "kept"
    assert b.epoch == 3 and b.train_config == a.train_config
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in a.model.state_dict().items())
    assert Predictor.from_checkpoint(out, device="cpu").generation == 4
    with pytest.raises(CheckpointError, match="not found"):
        copy_with_generation(tmp_path / "missing.pt", tmp_path / "x.pt", 1)
    assert not (tmp_path / "x.pt").exists()
