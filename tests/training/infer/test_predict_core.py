"""Sliding-window machinery of the fast Predictor against MONAI's reference, on random weights/inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from monai.inferers import sliding_window_inference

from training.data.preprocess import PreprocessConfig
from training.infer.predictor import PredictError, Predictor, class_argmax, foreground_mask
from training.infer.windows import _n_windows, plan_roi
from training.model.network import build_network, network_config
from training.model.norms import with_fast_instance_norm


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = network_config("tiny")
    return build_network(cfg).eval(), cfg


def _predictor(tiny, **kw) -> Predictor:
    model, cfg = tiny
    return Predictor(model, cfg, PreprocessConfig(), device="cpu", fast=True, **kw)


def _reference_logits(model, x: torch.Tensor, roi, overlap, mode) -> torch.Tensor:
    with torch.inference_mode():
        return sliding_window_inference(x[None], roi, 1, model, overlap=overlap, mode=mode)[0]


def test_fast_machinery_matches_monai_reference(tiny):
    """Same windows, fp32: fast norm + channels-last + skip-empty reproduce MONAI's sliding window."""
    model, _ = tiny
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 40, 36, 32, generator=g)
    ref = _reference_logits(model, x, (32, 32, 32), 0.5, "constant")
    p = _predictor(
        tiny, precision="fp32", roi_size=(32, 32, 32), overlap=0.5, blend="constant", head_crop=False
    )
    got = p.logits_cropped(x)
    assert got.shape == ref.shape
    assert p.last_stats.windows == math.prod(_n_windows(s, 32, 0.5) for s in x.shape[1:])
    pr, pg = torch.softmax(ref, 0), torch.softmax(got, 0)
    assert float((pr - pg).abs().max()) < 1e-2
    assert float((ref.argmax(0) == got.argmax(0)).float().mean()) >= 0.99


def test_gaussian_blending_matches_reference(tiny):
    model, _ = tiny
    x = torch.randn(1, 40, 36, 32, generator=torch.Generator().manual_seed(2))
    ref = _reference_logits(model, x, (32, 32, 32), 0.25, "gaussian")
    p = _predictor(
        tiny, precision="fp32", roi_size=(32, 32, 32), overlap=0.25, blend="gaussian", head_crop=False
    )
    got = p.logits_cropped(x)
    assert float((torch.softmax(ref, 0) - torch.softmax(got, 0)).abs().max()) < 1e-2
    assert float((ref.argmax(0) == got.argmax(0)).float().mean()) >= 0.99


def test_bf16_autocast_close_to_fp32(tiny):
    x = torch.randn(1, 32, 40, 32, generator=torch.Generator().manual_seed(3))
    p32 = _predictor(tiny, precision="fp32", head_crop=False)
    pbf = _predictor(tiny, precision="bf16", head_crop=False)
    a, b = p32.logits_cropped(x), pbf.logits_cropped(x)
    assert pbf.last_stats.autocast == "bfloat16" and b.dtype == torch.float32
    pa, pb = torch.softmax(a, 0), torch.softmax(b, 0)
    assert float((pa - pb).abs().mean()) < 0.01
    assert float((a.argmax(0) == b.argmax(0)).float().mean()) >= 0.95


def test_fast_instance_norm_equals_instance_norm():
    torch.manual_seed(0)
    norm = torch.nn.InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1, 1)
    model = torch.nn.Sequential(norm)
    fast = with_fast_instance_norm(model)
    assert isinstance(model[0], torch.nn.InstanceNorm3d)  # the caller's model is untouched
    x = torch.randn(3, 6, 10, 12, 8) * 3 + 2
    with torch.inference_mode():
        ref = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(ref, got, atol=1e-4)


def test_volume_smaller_than_window_single_window_blending_irrelevant(tiny):
    x = torch.randn(1, 11, 7, 13, generator=torch.Generator().manual_seed(4))
    a = _predictor(tiny, precision="fp32", blend="constant", head_crop=False).logits_cropped(x)
    b = _predictor(tiny, precision="fp32", blend="gaussian", head_crop=False).logits_cropped(x)
    assert a.shape == (10, 11, 7, 13)
    assert torch.allclose(a, b, atol=1e-5)


def test_skip_empty_windows(tiny):
    """Windows without any image are not run; voxels only they cover come out as class 0."""
    x = torch.zeros(1, 96, 32, 32)
    x[:, :20] = torch.randn(1, 20, 32, 32, generator=torch.Generator().manual_seed(5))
    p = _predictor(tiny, precision="fp32", roi_size=(32, 32, 32), overlap=0.0, head_crop=False)
    lab = p.logits_cropped(x).argmax(0)
    assert p.last_stats.windows == 3 and p.last_stats.skipped == 2
    assert bool((lab[32:] == 0).all())
    q = _predictor(
        tiny, precision="fp32", roi_size=(32, 32, 32), overlap=0.0, head_crop=False, skip_empty=False
    )
    full = q.logits_cropped(x).argmax(0)
    assert q.last_stats.skipped == 0
    assert torch.equal(full[:32], lab[:32])  # computed windows are unaffected


def test_fp32_fallback_on_nonfinite_autocast_output(tiny):
    model, cfg = tiny

    class NaNUnderAutocast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.strides = model.strides

        def forward(self, x):
            out = self.inner(x)
            if torch.is_autocast_enabled("cpu"):
                out = out.clone()
                out[:, :, 0, 0, 0] = float("inf")
            return out

    x = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(6))
    p = Predictor(
        NaNUnderAutocast(),
        cfg,
        PreprocessConfig(),
        device="cpu",
        precision="bf16",
        head_crop=False,
        fast_norm=False,
        channels_last=False,
    )
    got = p.logits_cropped(x)
    assert p.last_stats.fp32_fallbacks >= 1
    assert bool(torch.isfinite(got).all())
    ref = _predictor(tiny, precision="fp32", head_crop=False, fast_norm=False).logits_cropped(x)
    assert torch.allclose(got, ref, atol=1e-4)


def test_tta_averages_mirrored_predictions(tiny):
    model, _ = tiny
    x = torch.randn(1, 24, 24, 24, generator=torch.Generator().manual_seed(7))
    p = _predictor(tiny, precision="fp32", tta=True, head_crop=False, fast_norm=False, channels_last=False,
                   large_windows=True, roi_size=(24, 24, 24))  # one window = the whole input: direct calls compare
    got = p.logits_cropped(x)
    with torch.inference_mode():
        acc = torch.zeros_like(got)
        for fx in (False, True):
            for fy in (False, True):
                for fz in (False, True):
                    dims = [d for d, f in zip((1, 2, 3), (fx, fy, fz), strict=True) if f]
                    xi = torch.flip(x, dims) if dims else x
                    oi = model(xi[None])[0]
                    acc += torch.flip(oi, dims) if dims else oi
    assert torch.allclose(got, acc / 8, atol=1e-4)


@pytest.mark.parametrize("shape", [(200, 260, 230), (217, 290, 290), (40, 50, 60), (10, 10, 10)])
def test_plan_roi_covers_with_stride_multiples(shape):
    div = (32, 32, 32)
    cap = 224 * 288 * 256
    roi = plan_roi(shape, div, overlap=0.125, max_window_voxels=cap)
    assert all(r % d == 0 for r, d in zip(roi, div, strict=True))
    assert math.prod(roi) <= cap
    n = [_n_windows(s, r, 0.125) for s, r in zip(shape, roi, strict=True)]
    # cover: the last window ends at or beyond the volume end (MONAI places it flush with the end)
    assert all(k >= 1 for k in n)
    # never more voxels than the paper's 128³ tiling at overlap 0.5
    paper = math.prod(_n_windows(s, 128, 0.5) for s in shape) * 128**3
    assert math.prod(n) * math.prod(roi) <= paper


def test_plan_roi_floor_is_planned_not_applied_afterwards():
    """With the training patch as floor, a memory cap that splits an axis gives the cheapest split ≥ patch."""
    shape, div, floor = (217, 256, 224), (32, 32, 32), (128, 128, 128)
    cap = 224 * 160 * 224
    roi = plan_roi(shape, div, overlap=0.125, max_window_voxels=cap, min_window=floor)
    assert all(r >= f for r, f in zip(roi, floor, strict=True)) and math.prod(roi) <= cap

    def cost(r):
        return math.prod(_n_windows(s, x, 0.125) for s, x in zip(shape, r, strict=True)) * math.prod(r)

    floored_after = tuple(max(r, f) for r, f in zip(plan_roi(shape, div, overlap=0.125, max_window_voxels=cap),
                                                    floor, strict=True))
    assert cost(roi) <= cost(floored_after)
    # exhaustive check over the multiples of 32 between the floor and the axis: nothing cheaper fits the cap
    sides = [range(f, s + d, d) for s, f, d in zip(shape, floor, div, strict=True)]
    best = min(cost(r) for r in itertools.product(*sides) if math.prod(r) <= cap)
    assert cost(roi) == best


def test_foreground_mask_background_value():
    x = torch.zeros(2, 4, 4, 4)
    x[1, 1, 1, 1] = -0.5  # normalised tissue can be negative: still foreground
    fg = foreground_mask(x, 0.0)
    assert int(fg.sum()) == 1 and bool(fg[1, 1, 1])


def test_bad_options_raise(tiny):
    model, cfg = tiny
    with pytest.raises(PredictError):
        Predictor(model, cfg, PreprocessConfig(), device="cpu", overlap=1.5)
    with pytest.raises(PredictError):
        Predictor(model, cfg, PreprocessConfig(), device="cpu", precision="int4")
    with pytest.raises(PredictError):
        Predictor(model, cfg, PreprocessConfig(), device="cpu", no_such_option=1)
    p = Predictor(model, cfg, PreprocessConfig(), device="cpu", roi_size=(30, 32, 32))
    with pytest.raises(PredictError):
        p.logits_cropped(torch.zeros(1, 8, 8, 8))


def test_single_window_path_equals_monai_with_one_window(tiny):
    """A volume that one window covers skips MONAI's buffers but pads and crops exactly as it does."""
    model, _ = tiny
    x = torch.randn(1, 27, 30, 19, generator=torch.Generator().manual_seed(8))
    ref = _reference_logits(model, x, (32, 32, 32), 0.125, "gaussian")
    p = _predictor(tiny, precision="fp32", roi_size=(32, 32, 32), head_crop=False, skip_empty=False)
    got = p.logits_cropped(x)
    assert got.shape == ref.shape and p.last_stats.windows == 1
    assert torch.allclose(got, ref, atol=1e-4)


def test_large_windows_plan_few_windows_at_least_the_patch(tiny):
    model, cfg = tiny
    p = _predictor(tiny, large_windows=True)
    roi = p.window_size((20, 70, 40))
    assert all(r >= s for r, s in zip(roi, cfg.patch_size, strict=True))
    assert all(r % d == 0 for r, d in zip(roi, p.divisor, strict=True))
    x = torch.randn(1, 20, 70, 40, generator=torch.Generator().manual_seed(9))
    out = p.logits_cropped(x)
    assert out.shape == (cfg.out_channels, 20, 70, 40) and torch.isfinite(out).all()
    assert p.last_stats.windows < math.prod(_n_windows(s, 32, 0.125) for s in (20, 70, 40))


def test_window_mode_follows_the_preset_measurement(tiny):
    """Large windows only for presets measured to keep their accuracy with them (the paper network)."""
    from training.model.network import large_windows_safe

    assert large_windows_safe(network_config("paper"))
    assert not large_windows_safe(network_config("cpu")) and not large_windows_safe(None)
    model, cfg = tiny
    q = _predictor(tiny)  # tiny preset: patch-size windows
    assert not q.settings.large_windows and q.settings.roi_size == tuple(cfg.patch_size)
    assert _predictor(tiny, roi_size=(40, 40, 40)).settings.roi_size == (40, 40, 40)


def test_head_box_grows_to_the_window_inside_the_volume(tiny):
    import numpy as np

    p = _predictor(tiny)
    lo, hi = p._grow_to_window(np.array([0, 10, 30]), np.array([20, 30, 50]), (64, 64, 40))
    roi = p.window_size((20, 20, 20))
    assert list(hi - lo) == [min(r, f) for r, f in zip(roi, (64, 64, 40), strict=True)]
    assert (lo >= 0).all() and (hi <= np.array([64, 64, 40])).all()
    assert lo[0] == 0 and lo[1] <= 10 and hi[1] >= 30  # still contains the original box


def test_class_argmax_equals_torch_argmax_with_ties():
    g = torch.Generator().manual_seed(10)
    x = torch.randint(-3, 3, (10, 9, 8, 7), generator=g).float()  # many ties
    assert torch.equal(class_argmax(x), torch.argmax(x, dim=0))
    cl = x.unsqueeze(0).contiguous(memory_format=torch.channels_last_3d)[0]
    assert torch.equal(class_argmax(cl), torch.argmax(x, dim=0))
