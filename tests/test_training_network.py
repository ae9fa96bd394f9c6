"""Network presets: nnU-Net style kernels/strides and DynUNet outputs."""

from __future__ import annotations

import pytest
import torch

from training.labels import NUM_CLASSES
from training.network import NetworkConfigError, build_network, kernels_strides, network_config


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
