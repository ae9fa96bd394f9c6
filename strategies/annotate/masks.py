"""Turn assignments into partial labels (255 = not annotated) and merge annotation rounds.

A partial label keeps the annotator's values on the assigned slices and ``IGNORE`` everywhere
else, so training sees exactly what was annotated. Several assignments of one image (other
rounds or other axes) unite. ``merge_partial`` keeps every round: where both rounds annotated
a voxel and disagree, the newer value wins (the later look is the corrected one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from strategies.plan.assignment import SliceAssignment
from training.data.labels import IGNORE, validate_label


class MaskError(ValueError):
    """Arrays or assignments that cannot be combined (shape mismatch, other image, bad values)."""


def _as_list(assignments: SliceAssignment | Iterable[SliceAssignment]) -> list[SliceAssignment]:
    if isinstance(assignments, SliceAssignment):
        return [assignments]
    out = list(assignments)
    for a in out:
        if not isinstance(a, SliceAssignment):
            raise MaskError(f"expected SliceAssignment objects, got {type(a).__name__}")
    return out


def assignment_mask(
    shape: Sequence[int],
    assignments: SliceAssignment | Iterable[SliceAssignment],
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean ``shape`` mask, True on every voxel of every assigned slice.

    All assignments must name the same image; with ``affine`` each assignment's axis is checked
    against the image's anatomical axes.
    """
    items = _as_list(assignments)
    if len(shape) != 3:
        raise MaskError(f"image shape must be 3D, got {tuple(shape)}")
    images = {a.image for a in items}
    if len(images) > 1:
        raise MaskError(f"assignments name several images {sorted(images)}; give one image's assignments")
    mask = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for a in items:
        try:
            a.check_image(shape, affine)
        except ValueError as exc:
            raise MaskError(str(exc)) from None
        if not a.indices:
            continue
        index: list[slice | list[int]] = [slice(None)] * 3
        index[a.voxel_axis] = list(a.indices)
        mask[tuple(index)] = True
    return mask


def partial_label(
    full_label: np.ndarray,
    assignments: SliceAssignment | Iterable[SliceAssignment],
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """The label on the assigned slices, ``IGNORE`` (255) elsewhere; uint8, a new array.

    ``full_label`` is a dense label (e.g. the oracle in simulation, or Slicer's submitted
    labelmap with 0 on unpainted slices). Values must be 0–9; 255 inside the assigned slices is
    kept (that voxel stays un-annotated).
    """
    lab = np.asarray(full_label)
    try:
        lab = validate_label(lab, what="label")
    except ValueError as exc:
        raise MaskError(str(exc)) from None
    mask = assignment_mask(lab.shape, assignments, affine)
    out = np.full(lab.shape, IGNORE, dtype=np.uint8)
    out[mask] = lab[mask]
    return out


def merge_partial(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Union of two partial labels of one image; where both annotated, ``new`` wins.

    Every voxel annotated in either round stays annotated. Shape mismatch or values outside
    the label contract → :class:`MaskError`; the inputs are not modified.
    """
    a, b = np.asarray(old), np.asarray(new)
    if a.shape != b.shape:
        raise MaskError(f"cannot merge partial labels of different shapes {a.shape} and {b.shape}")
    try:
        a = validate_label(a, what="old partial label")
        b = validate_label(b, what="new partial label")
    except ValueError as exc:
        raise MaskError(str(exc)) from None
    return np.where(b != IGNORE, b, a).astype(np.uint8)
