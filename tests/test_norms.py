"""Inference-time instance norms: batch-norm kernels (same maths) and patch-context statistics."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from training.network import build_network, network_config
from training.norms import (
    PatchContextInstanceNorm,
    _InputShape,
    with_fast_instance_norm,
    with_patch_context_norm,
)


def _norm(channels: int, seed: int = 0) -> torch.nn.InstanceNorm3d:
    torch.manual_seed(seed)
    norm = torch.nn.InstanceNorm3d(channels, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1.0, 1.0)
    return norm.requires_grad_(False)


def _brute_force(x: torch.Tensor, norm, block: int, k: int) -> torch.Tensor:
    """Each block normalised by the moments of the k-block window centred on it (clamped inside;
    a centre between two window positions averages their moments), computed window by window."""
    out = torch.empty_like(x, dtype=torch.float64)
    n = [s // block for s in x.shape[2:]]

    def starts(i: int, nb: int) -> list[tuple[int, float]]:
        t = min(max(i + 0.5 - k / 2, 0.0), float(nb - k))
        lo = math.floor(t)
        return [(lo, 1.0 - (t - lo))] + ([(lo + 1, t - lo)] if t > lo else [])

    w = norm.weight.double().view(-1, 1, 1, 1)
    b = norm.bias.double().view(-1, 1, 1, 1)
    for i in range(n[0]):
        for j in range(n[1]):
            for m in range(n[2]):
                m1 = m2 = 0.0
                for a, wa in starts(i, n[0]):
                    for c, wc in starts(j, n[1]):
                        for d, wd in starts(m, n[2]):
                            win = x[0, :, a * block : (a + k) * block, c * block : (c + k) * block,
                                    d * block : (d + k) * block].double()
                            m1 = m1 + wa * wc * wd * win.mean((1, 2, 3))
                            m2 = m2 + wa * wc * wd * (win**2).mean((1, 2, 3))
                var = (m2 - m1**2).view(-1, 1, 1, 1)
                sl = (0, slice(None), slice(i * block, (i + 1) * block), slice(j * block, (j + 1) * block),
                      slice(m * block, (m + 1) * block))
                out[sl] = (x[sl].double() - m1.view(-1, 1, 1, 1)) / torch.sqrt(var + norm.eps) * w + b
    return out.float()


@pytest.fixture
def trend_input() -> torch.Tensor:
    # a smooth trend along x makes the local statistics differ from the global ones
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 40, 24, 16, generator=g) * 2 + torch.linspace(0, 5, 40).view(1, 1, 40, 1, 1)


def test_patch_context_norm_matches_window_by_window_reference(trend_input):
    norm = _norm(3)
    m = PatchContextInstanceNorm(norm, (16, 16, 16), _InputShape((40, 24, 16)))
    got = m(trend_input)
    ref = _brute_force(trend_input, norm, block=4, k=4)
    assert float((got - ref).abs().max()) < 1e-4
    # and it is not plain instance norm over the whole input (the trend changes the statistics)
    assert float((got - norm(trend_input)).abs().max()) > 0.1


def test_corner_block_is_instance_norm_of_the_corner_patch(trend_input):
    norm = _norm(3, seed=2)
    m = PatchContextInstanceNorm(norm, (16, 16, 16), _InputShape((40, 24, 16)))
    got = m(trend_input)
    corner = norm(trend_input[:, :, :16, :16, :16])
    assert torch.allclose(got[:, :, :4, :4, :4], corner[:, :, :4, :4, :4], atol=1e-5)
    far = norm(trend_input[:, :, -16:, -16:, -16:])
    assert torch.allclose(got[:, :, -4:, -4:, -4:], far[:, :, -4:, -4:, -4:], atol=1e-5)


def test_layout_batch_and_bf16(trend_input):
    norm = _norm(3, seed=3)
    m = PatchContextInstanceNorm(norm, (16, 16, 16), _InputShape((40, 24, 16)))
    ref = m(trend_input)
    cl = m(trend_input.contiguous(memory_format=torch.channels_last_3d))
    assert torch.equal(cl, ref) and cl.is_contiguous(memory_format=torch.channels_last_3d)
    pair = m(torch.cat([trend_input, trend_input.flip(2)]))
    assert torch.allclose(pair[0], ref[0], atol=1e-6)
    assert torch.allclose(pair[1], m(trend_input.flip(2))[0], atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(trend_input.bfloat16())
    assert low.dtype == torch.bfloat16
    assert float((low.float() - ref).abs().mean()) < 0.02


def test_network_on_a_patch_sized_input_is_unchanged():
    cfg = network_config("tiny")
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    ctx = with_patch_context_norm(net, cfg.patch_size).eval()
    fast = with_fast_instance_norm(net).eval()
    x = torch.randn(1, 1, *cfg.patch_size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = net(x)
        assert torch.allclose(ctx(x), ref, atol=1e-5)
        assert torch.allclose(fast(x), ref, atol=1e-5)
        big = torch.randn(2, 1, 64, 32, 96, generator=torch.Generator().manual_seed(5))
        assert ctx(big).shape == (2, cfg.out_channels, 64, 32, 96)
    assert set(fast.state_dict()) == set(net.state_dict())  # trained weights load back unchanged


def test_deepcopy_keeps_the_norms_linked_to_the_wrapper():
    cfg = network_config("tiny")
    ctx = with_patch_context_norm(build_network(cfg).eval(), cfg.patch_size)
    twin = copy.deepcopy(ctx)
    norms = [m for m in twin.modules() if isinstance(m, PatchContextInstanceNorm)]
    assert norms and all(n._input is twin.input_shape for n in norms)
    with torch.inference_mode():
        twin(torch.zeros(1, 1, 64, 32, 32))
    assert twin.input_shape.shape == (64, 32, 32) and ctx.input_shape.shape != (64, 32, 32)
