"""Sliding-window planning: which window size covers a (head-cropped) volume at the least network cost.

Pure arithmetic on shapes (no torch): the network's cost is proportional to the voxels it sees
(measured: per-voxel time is flat or falls with window size), so the best plan covers the crop with as
few, as tight windows as memory allows; every side is a multiple of the encoder's total stride.
Window counts follow MONAI's ``sliding_window_inference`` placement exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np

__all__ = ["grow_box_to_window", "plan_roi", "stride_divisor", "window_size"]


def stride_divisor(model: Any, network_cfg: Any | None) -> tuple[int, int, int]:
    """Product of the encoder strides per axis: every window side must be a multiple of it."""
    strides = getattr(network_cfg, "strides", None) or getattr(model, "strides", None)
    if not strides:
        return (1, 1, 1)
    total = np.ones(3, dtype=int)
    for s in strides:
        total *= np.broadcast_to(np.asarray(s, dtype=int), (3,))
    return tuple(int(v) for v in total)


def _round_up(v: int, d: int) -> int:
    return int(math.ceil(v / d) * d)


def _n_windows(size: int, roi: int, overlap: float) -> int:
    """Windows along one axis exactly as MONAI's sliding_window_inference places them."""
    if roi >= size:
        return 1
    interval = max(int(roi * (1 - overlap)), 1)
    return int(math.ceil((size - roi) / interval)) + 1


def _axis_options(size: int, d: int, floor: int, overlap: float, max_windows: int) -> list[tuple[int, int]]:
    """(windows, side) pairs along one axis: for each count, the smallest side that achieves it."""
    opts = {}
    for n in range(1, max_windows + 1):
        # smallest multiple of d (≥ the floor) with which n windows at this overlap cover the axis
        r = _round_up(max(int(math.ceil(size / (1 + (n - 1) * (1 - overlap)))), d, int(floor)), d)
        while _n_windows(size, r, overlap) > n:
            r += d
        opts[_n_windows(size, r, overlap)] = r
    return sorted(opts.items())


def plan_roi(
    shape: Sequence[int],
    divisor: Sequence[int],
    *,
    overlap: float,
    max_window_voxels: int,
    max_windows_per_axis: int = 4,
    min_window: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """Window size that minimises the voxels the network processes for a volume of ``shape``.

    Each side is a multiple of the stride product and at least ``min_window`` (the training patch: a
    floor applied after planning would cost more windows); a window holds at most ``max_window_voxels``
    (memory) unless no plan fits, then the smallest window wins.
    """
    floors = min_window if min_window is not None else (1,) * len(shape)
    per_axis = [
        _axis_options(size, d, lo, overlap, max_windows_per_axis)
        for size, d, lo in zip(shape, divisor, floors, strict=True)
    ]
    best: tuple[float, int, tuple[int, int, int]] | None = None
    for combo in product(*per_axis):
        roi = tuple(r for _, r in combo)
        if math.prod(roi) > max_window_voxels and best is not None:
            continue
        n_win = math.prod(n for n, _ in combo)
        key = (n_win * math.prod(roi), n_win, roi)
        if best is None or math.prod(best[2]) > max_window_voxels or key < best:
            best = key
    assert best is not None
    return best[2]


def window_size(
    shape: Sequence[int],
    divisor: Sequence[int],
    *,
    roi_size: Sequence[int] | None,
    patch_size: Sequence[int] | None,
    overlap: float,
    max_window_voxels: int,
    max_windows_per_axis: int,
) -> tuple[int, int, int]:
    """The sliding-window roi for a (cropped) volume of ``shape``: ``roi_size`` if fixed, else planned.

    A planned window is never smaller than the training patch: the network sees (at least) the context
    it was trained on.
    """
    if roi_size is not None:
        return tuple(roi_size)
    floor = None if patch_size is None else tuple(
        _round_up(p, d) for p, d in zip(patch_size, divisor, strict=True))
    return plan_roi(
        shape,
        divisor,
        overlap=overlap,
        max_window_voxels=max_window_voxels,
        max_windows_per_axis=max_windows_per_axis,
        min_window=floor,
    )


def grow_box_to_window(
    lo: np.ndarray, hi: np.ndarray, roi: Sequence[int], full: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Widen a box (centred, inside the volume of shape ``full``) along the axes that one window of
    ``roi`` covers: the window's extra voxels then hold image context instead of zero padding, at no
    extra cost."""
    lo, hi = lo.copy(), hi.copy()
    for ax in range(3):
        size = int(hi[ax] - lo[ax])
        if roi[ax] <= size:
            continue
        target = min(int(roi[ax]), int(full[ax]))
        extra = target - size
        new_lo = max(int(lo[ax]) - extra // 2, 0)
        new_hi = min(new_lo + target, int(full[ax]))
        lo[ax], hi[ax] = new_hi - target, new_hi
    return lo, hi
