"""How the predictor runs: the two settings families and the autocast precision per device.

* :func:`fast_settings` (the default): crop to the head (+ 2 mm), then — for networks whose preset was
  measured to keep its accuracy that way (``training.model.network.large_windows_safe``: the paper
  network) — as few, as large windows as memory allows (``training.infer.windows.plan_roi``; one window
  for a dHCP-size head on CPU, grown to real image context instead of zero padding), each at least the
  training patch; other networks get windows of the training patch size with gaussian blending at
  overlap 0.125 (the cpu preset lost tissue Dice with one whole-head window); bf16 autocast where the
  device runs it fast (checked per window: a non-finite output is recomputed in fp32; softmax is always
  fp32), instance norm through the batch-norm kernels (``training.model.norms``), channels-last 3D
  memory format, windows without foreground skipped. Every choice was measured (``bench/inference.py``;
  numbers in ``docs/STATUS.md``). ``large_windows=True/False`` overrides the preset's choice.
* :func:`reference_settings`: the paper's settings (roi = training patch, overlap 0.5, constant
  blending, sw_batch 1, fp32, every window), the baseline that the fast settings are compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from training.model.network import large_windows_safe

__all__ = [
    "InferenceSettings",
    "PredictError",
    "fast_settings",
    "reference_settings",
    "resolve_precision",
    "resolve_settings",
]


class PredictError(ValueError):
    """Bad inference input or settings (message says what to change)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How the sliding window runs. ``roi_size=None`` → planned from the cropped volume (``plan_roi``)."""

    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.5
    blend: str = "constant"  # "constant" | "gaussian"
    sigma_scale: float = 0.125
    sw_batch_size: int = 1
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" | "auto"
    skip_empty: bool = False
    channels_last: bool = False
    tta: bool = False
    max_window_voxels: int = 224 * 288 * 256
    max_windows_per_axis: int = 4
    fill_logit: float = -30.0  # logit of non-background classes in a skipped (empty) window
    head_crop: bool = False  # crop to the detected head (+ margin) before the network, class 0 outside
    head_margin_mm: float = 2.0  # the box is the Otsu head mask's extent; windows round it up anyway
    head_retries: int = 1  # extra passes with a widened box when the brain touches a cut face
    head_face_mm2: float = 25.0  # predicted brain area on a box face that widens the box (second pass)
    fast_norm: bool = False  # instance norm via batch-norm kernels (no layout copies; same maths)
    large_windows: bool = False  # fast mode: plan few large windows (plan_roi) instead of patch-size ones
    roi_to_box: bool = False  # grow the head box to the planned window (real context instead of zero padding)


def reference_settings(patch_size: Sequence[int]) -> InferenceSettings:
    """The paper's inference settings (the baseline every speed-up is compared against)."""
    return InferenceSettings(
        roi_size=tuple(int(p) for p in patch_size),
        overlap=0.5,
        blend="constant",
        sw_batch_size=1,
        precision="fp32",
        skip_empty=False,
        channels_last=False,
        tta=False,
        head_crop=False,
        fast_norm=False,
    )


def fast_settings(device: torch.device | str = "cpu", network_cfg: Any | None = None) -> InferenceSettings:
    """Measured defaults for speed at unchanged accuracy (see module docstring); the window mode is the
    network preset's measured choice (``large_windows_safe``)."""
    settings = InferenceSettings(
        roi_size=None,
        overlap=0.125,
        blend="gaussian",
        sw_batch_size=1,
        precision="auto",
        skip_empty=True,
        channels_last=True,
        head_crop=True,
        fast_norm=True,
        large_windows=large_windows_safe(network_cfg),
        roi_to_box=True,
    )
    if torch.device(device).type == "cuda":
        return replace(settings, overlap=0.25, sw_batch_size=2, max_window_voxels=256 * 320 * 256)
    return settings


def resolve_settings(
    device: torch.device,
    network_cfg: Any | None,
    *,
    fast: bool,
    patch_size: tuple[int, ...] | None,
    overrides: dict[str, Any],
) -> InferenceSettings:
    """The chosen family with a caller's keyword ``overrides`` applied, checked (:class:`PredictError`)."""
    unknown = set(overrides) - set(InferenceSettings.__dataclass_fields__)
    if unknown:
        raise PredictError(f"unknown inference option(s): {', '.join(sorted(unknown))}")
    overrides = dict(overrides)
    if overrides.get("roi_size") is not None:
        overrides["roi_size"] = tuple(int(v) for v in np.broadcast_to(overrides["roi_size"], (3,)))
    if fast:
        settings = fast_settings(device, network_cfg)
    else:
        if patch_size is None and overrides.get("roi_size") is None:
            raise PredictError("reference settings need the training patch size (network_cfg.patch_size)")
        settings = reference_settings(patch_size if patch_size is not None else overrides["roi_size"])
    settings = replace(settings, **overrides)
    if fast and not settings.large_windows and settings.roi_size is None and patch_size is not None:
        # Windows of the training patch size: instance norm then sees the context it was trained on.
        settings = replace(settings, roi_size=patch_size)
    _check(settings)
    return settings


def _check(s: InferenceSettings) -> None:
    if s.blend not in {"constant", "gaussian"}:
        raise PredictError(f"blend must be 'constant' or 'gaussian', not {s.blend!r}")
    if not 0.0 <= s.overlap < 1.0:
        raise PredictError(f"overlap must be in [0, 1), got {s.overlap}")
    if s.sw_batch_size < 1:
        raise PredictError("sw_batch_size must be ≥ 1")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32."""
    p = precision.lower()
    if p not in {"fp32", "bf16", "fp16", "auto"}:
        raise PredictError(f"precision must be fp32, bf16, fp16 or auto, not {precision!r}")
    if p == "fp32":
        return None
    if device.type == "cuda":
        if p == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if p == "bf16" else torch.float16
    if device.type == "cpu":
        if p == "auto":
            # bf16 only pays on CPUs with native bf16 (AVX512-BF16 / AMX); elsewhere it is slower than fp32.
            return torch.bfloat16 if _cpu_has_native_bf16() else None
        return torch.bfloat16 if p == "bf16" else torch.float16
    return None if p == "auto" else (torch.bfloat16 if p == "bf16" else torch.float16)


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False
