"""Segmentation metrics on dense (or partial) drawem9 labels: one definition for training, evaluation and
the simulation.

Conventions (stated once, used everywhere):

* **Dice** per class ``c``: ``2|P∩R| / (|P|+|R|)`` over annotated voxels (``ref != IGNORE``).
  A class absent from both prediction and reference has no defined Dice: it is ``NaN`` by default
  (``empty=`` lets a caller choose ``1.0``) and means skip it (``nanmean``). A class present in only
  one of the two gets ``0.0``.
* **Tissue mean**: the mean of the per-class Dice over ``labels.TISSUE`` (1–3, 5–9), NaNs skipped.
* **HD95** per class: the symmetric 95th-percentile Hausdorff distance in millimetres (the larger of
  the two directed 95th percentiles of surface-to-surface distances, as MONAI's
  ``compute_hausdorff_distance(percentile=95, directed=False)`` and medpy's ``hd95``), using the
  voxel spacing. ``NaN`` when the class is absent from either volume. Only defined for dense
  references (a partial reference has no surface to measure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

from training.data import labels as L

__all__ = ["EvaluationError", "dice_per_class", "hd95_per_class", "nanmean", "tissue_mean"]


class EvaluationError(ValueError):
    """Inputs that cannot be compared (shape mismatch, no labelled subjects, ...)."""


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise EvaluationError(f"prediction shape {p.shape} differs from reference shape {r.shape}")
    return p, r


def _classes(classes: Iterable[int] | None) -> list[int]:
    return list(range(L.NUM_CLASSES)) if classes is None else [int(c) for c in classes]


def dice_per_class(
    pred: np.ndarray,
    ref: np.ndarray,
    classes: Iterable[int] | None = None,
    *,
    empty: float = math.nan,
) -> dict[int, float]:
    """Dice of each class over the annotated voxels of ``ref`` (voxels equal to IGNORE are skipped).

    ``empty`` is returned for a class absent from both volumes (default NaN, see module docstring).
    """
    p, r = _check_pair(pred, ref)
    classes = _classes(classes)
    annotated = r != L.IGNORE
    if not annotated.all():
        p, r = p[annotated], r[annotated]
    else:
        p, r = p.ravel(), r.ravel()
    # One pass with bincount over (pred, ref) pairs instead of 2×K boolean volumes.
    n = max(max(classes, default=0), int(p.max(initial=0)), int(r.max(initial=0))) + 1
    joint = np.bincount(p.astype(np.int64) * n + r.astype(np.int64), minlength=n * n).reshape(n, n)
    out: dict[int, float] = {}
    for c in classes:
        inter = float(joint[c, c]) if c < n else 0.0
        sp = float(joint[c, :].sum()) if c < n else 0.0
        sr = float(joint[:, c].sum()) if c < n else 0.0
        out[c] = float(empty) if sp + sr == 0 else 2.0 * inter / (sp + sr)
    return out


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    surf_a = a & ~ndimage.binary_erosion(a)
    surf_b = b & ~ndimage.binary_erosion(b)
    dist_to_b = ndimage.distance_transform_edt(~surf_b, sampling=spacing)
    return dist_to_b[surf_a]


def _union_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``a | b`` plus one voxel: the distance transforms give the same result inside it."""
    union = a | b
    box = []
    for ax in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != ax)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), int(idx[-1]) + 2))
    return tuple(box)


def hd95_per_class(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    classes: Iterable[int] | None = None,
    *,
    percentile: float = 95.0,
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance per class in mm (NaN if a class is absent in either).

    Each class is cropped to the bounding box of pred ∪ ref plus a 1-voxel margin before the
    distance transforms: same result as on the whole volume, at a fraction of the cost.
    """
    p, r = _check_pair(pred, ref)
    if p.ndim != len(spacing):
        raise EvaluationError(f"spacing {tuple(spacing)} does not match a {p.ndim}-D volume")
    if np.any(r == L.IGNORE):
        raise EvaluationError("HD95 needs a dense reference label; this one has not-annotated voxels (255)")
    out: dict[int, float] = {}
    for c in _classes(classes):
        a, b = p == c, r == c
        if not a.any() or not b.any():
            out[c] = math.nan
            continue
        box = _union_box(a, b)
        a_c, b_c = a[box], b[box]
        d_ab = _surface_distances(a_c, b_c, spacing)
        d_ba = _surface_distances(b_c, a_c, spacing)
        out[c] = float(max(np.percentile(d_ab, percentile), np.percentile(d_ba, percentile)))
    return out


def tissue_mean(per_class: dict[int, float]) -> float:
    """Mean over ``labels.TISSUE`` with NaNs skipped (NaN if every tissue value is NaN)."""
    return nanmean(per_class[c] for c in L.TISSUE if c in per_class)


def nanmean(values: Iterable[float]) -> float:
    """Mean with NaNs skipped, NaN when nothing is left (no warning, unlike ``np.nanmean``)."""
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan
