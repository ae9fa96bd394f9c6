"""Foreground-aware random slice choice: the baseline any active strategy has to beat.

Random slices drawn only among slices that contain foreground (brain), never from empty ones
(nnActive 2025: most active strategies do not beat this baseline).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class ForegroundError(ValueError):
    """A mask or request that cannot give foreground slices."""


def foreground_slices(mask: np.ndarray, voxel_axis: int) -> np.ndarray:
    """Sorted voxel indices along ``voxel_axis`` whose slice has at least one non-zero voxel."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ForegroundError(f"foreground mask must be 3D, got shape {m.shape}")
    if voxel_axis not in (0, 1, 2):
        raise ForegroundError(f"voxel_axis must be 0, 1 or 2, got {voxel_axis}")
    other = tuple(a for a in range(3) if a != voxel_axis)
    return np.flatnonzero((m != 0).any(axis=other))


def random_foreground_slices(
    mask: np.ndarray,
    voxel_axis: int,
    k: int,
    seed: int | np.random.Generator,
    *,
    exclude: Iterable[int] = (),
) -> list[int]:
    """``k`` distinct random foreground slices (sorted), none from ``exclude``; fewer if fewer exist."""
    if k < 0:
        raise ForegroundError(f"k must be >= 0, got {k}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ex = {int(i) for i in exclude}
    cand = np.asarray([i for i in foreground_slices(mask, voxel_axis) if int(i) not in ex], dtype=int)
    if cand.size == 0 or k == 0:
        return []
    picked = rng.choice(cand, size=min(k, cand.size), replace=False)
    return sorted(int(i) for i in picked)
