"""Where the head is in an MRI volume: the one detector behind the predictor's head crop and the planner's
brain-extent fallback (a scan that no model or brain mask has covered yet).

The detector works on a copy at about 2 mm per voxel (fast on dHCP-size volumes, and the smoothing then
spans ~2 mm whatever the resolution). With an exact background value (preprocess keeps zeros at 0) the
head is what differs from it; otherwise a two-level Otsu threshold on a smoothed copy: the first level
separates bright tissue, the second, on what lies below it, separates dark head tissue from noisy air.
Only the largest connected component is kept, so noise blobs and scanner artefacts in the air are dropped.

Numpy, scipy and scikit-image only: the torch-free planning layer imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = ["head_box", "head_mask"]

WORK_MM = 2.0  # voxel size of the working copy
EXACT_BACKGROUND_FRACTION = 0.05  # share of voxels equal to ``background`` that makes it "exact"


def _factors(spacing: Sequence[float] | None, ndim: int) -> np.ndarray:
    """Integer subsampling per axis that brings ``spacing`` (mm) near ``WORK_MM``; 1 without a spacing."""
    if spacing is None:
        return np.ones(ndim, dtype=int)
    sp = np.asarray(spacing, dtype=float)
    return np.maximum(np.round(WORK_MM / np.maximum(sp, 1e-6)).astype(int), 1)


def _otsu_mask(small: np.ndarray) -> np.ndarray | None:
    """Voxels above the second Otsu level of the smoothed copy (None for a constant image)."""
    sm = ndimage.gaussian_filter(small, 1.0)
    if float(sm.max() - sm.min()) <= 1e-6:
        return None
    t1 = threshold_otsu(sm)
    low = sm[sm <= t1]
    t2 = threshold_otsu(low) if low.size > 1 and float(low.max() - low.min()) > 1e-6 else t1
    return sm > t2


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _coarse_head(volume: np.ndarray, factors: np.ndarray, background: float | None) -> np.ndarray | None:
    """The head on the subsampled grid ``volume[::f0, ::f1, ::f2]``, or None if nothing is found."""
    small = np.asarray(volume)[tuple(slice(None, None, int(f)) for f in factors)].astype(np.float32)
    if small.size < 8:
        return None
    finite = np.isfinite(small)
    if not finite.any():
        return None
    if not finite.all():
        small = np.where(finite, small, small[finite].min())
    if background is not None and float((small == background).mean()) > EXACT_BACKGROUND_FRACTION:
        mask = small != background
    else:
        mask = _otsu_mask(small)
    if mask is None or not mask.any():
        return None
    return _largest_component(mask)


def head_mask(
    image: np.ndarray, spacing: Sequence[float] | None = None, *, background: float | None = None
) -> np.ndarray:
    """Boolean mask of the head in a 3D ``image`` (same shape); all False if no head is found.

    ``spacing`` (mm per voxel) sets the ~2 mm working grid; without it the image's own grid is used
    (slower on fine images, same result up to the 2 mm blocks). ``background``: a value that marks
    air exactly (e.g. 0 after skull-stripping or preprocessing); None → always the Otsu threshold.
    Non-finite voxels count as air.
    """
    vol = np.asarray(image)
    if vol.ndim != 3:
        raise ValueError(f"head_mask needs a 3D volume, got shape {vol.shape}")
    f = _factors(spacing, vol.ndim)
    coarse = _coarse_head(vol, f, background)
    if coarse is None:
        return np.zeros(vol.shape, dtype=bool)
    full = coarse
    for ax in range(3):
        full = np.repeat(full, int(f[ax]), axis=ax)
    return np.ascontiguousarray(full[tuple(slice(0, n) for n in vol.shape)])


def head_box(
    image: np.ndarray, spacing: Sequence[float], margin_mm: float = 8.0, background: float | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Voxel box ``(lo, hi)`` (hi exclusive, clipped to the volume) of the head in a 3D ``image``, plus
    ``margin_mm``; None if no head is found (then a caller uses the whole volume).

    The extent is measured on the ~2 mm working grid: ``hi`` gets one extra working voxel, and a
    ``margin_mm`` of at least one working voxel covers what the subsampling can miss at ``lo``.
    ``background`` as in :func:`head_mask`.
    """
    vol = np.asarray(image)
    if vol.ndim != 3:
        raise ValueError(f"head_box needs a 3D volume, got shape {vol.shape}")
    f = _factors(spacing, 3)
    mask = _coarse_head(vol, f, background)
    if mask is None:
        return None
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    full = np.array(vol.shape)
    margin = np.ceil(margin_mm / np.maximum(np.asarray(spacing, dtype=float), 1e-6)).astype(int)
    lo = np.array([i[0] for i in idx]) * f - margin
    hi = (np.array([i[-1] for i in idx]) + 1) * f + f + margin
    return np.clip(lo, 0, full), np.clip(hi, 0, full)
