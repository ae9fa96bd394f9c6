"""Anatomical slicing axes from an image's affine, and a canonical anatomical slice frame.

Axis names are never assumed from the voxel order: they come from ``nibabel.aff2axcodes``
(sagittal = the voxel axis along left–right, coronal = anterior–posterior, axial =
superior–inferior). Plans choose slices in a *canonical* frame in which slice index 0 is the
most left (sagittal), most posterior (coronal) or most inferior (axial) plane — the RAS+
convention — and map them to each image's voxel indices. The same anatomy stored in RAS, LPS or
with permuted voxel axes therefore gets the same physical planes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np

AXES: tuple[str, ...] = ("sagittal", "coronal", "axial")
"""The three anatomical slicing axes, in RAS order (L→R, P→A, I→S)."""

_CODE_TO_AXIS = {"R": "sagittal", "L": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}
_POSITIVE = {"R", "A", "S"}


class AxisError(ValueError):
    """An unknown axis name or an affine whose voxel axes do not map to three anatomical axes."""


@dataclass(frozen=True)
class AxisFrame:
    """How one anatomical axis of an image maps to its voxel grid."""

    name: str  # sagittal | coronal | axial
    voxel_axis: int  # 0, 1 or 2
    size: int  # number of slices along this axis
    flipped: bool  # True when voxel index grows towards L/P/I (canonical index = size - 1 - voxel index)

    def to_voxel(self, canonical: Iterable[int] | np.ndarray) -> np.ndarray:
        """Canonical (counted from left/posterior/inferior) slice indices → voxel indices."""
        c = np.asarray(list(canonical) if not isinstance(canonical, np.ndarray) else canonical, dtype=np.int64)
        return (self.size - 1 - c) if self.flipped else c

    def to_canonical(self, voxel: Iterable[int] | np.ndarray) -> np.ndarray:
        """Voxel indices → canonical indices (the map is its own inverse)."""
        return self.to_voxel(voxel)


def check_axis_name(axis: str) -> str:
    if axis not in AXES:
        raise AxisError(f"unknown axis {axis!r}; expected one of {', '.join(AXES)}")
    return axis


def axis_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """``aff2axcodes`` with a clear error for a malformed affine."""
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise AxisError(f"affine must be a finite 4×4 matrix, got shape {a.shape}")
    if abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise AxisError("affine is singular; cannot tell the anatomical axes")
    codes = nib.aff2axcodes(a)
    if any(c is None for c in codes) or len({_CODE_TO_AXIS[c] for c in codes}) != 3:
        raise AxisError(f"affine gives axis codes {codes}; cannot tell sagittal/coronal/axial apart")
    return tuple(codes)  # type: ignore[return-value]


def anatomical_axes(affine: np.ndarray) -> dict[str, int]:
    """``{"sagittal": v, "coronal": v, "axial": v}``: the voxel axis of each anatomical axis."""
    codes = axis_codes(affine)
    return {_CODE_TO_AXIS[c]: i for i, c in enumerate(codes)}


def axis_frames(affine: np.ndarray, shape: Sequence[int]) -> dict[str, AxisFrame]:
    """Per anatomical axis: voxel axis, number of slices and whether the index runs L/P/I-wards."""
    if len(shape) < 3:
        raise AxisError(f"shape must have 3 dimensions, got {tuple(shape)}")
    codes = axis_codes(affine)
    frames = {}
    for i, c in enumerate(codes):
        name = _CODE_TO_AXIS[c]
        frames[name] = AxisFrame(name=name, voxel_axis=i, size=int(shape[i]), flipped=c not in _POSITIVE)
    return {name: frames[name] for name in AXES}


def axis_name_of_voxel_axis(affine: np.ndarray, voxel_axis: int) -> str:
    for name, v in anatomical_axes(affine).items():
        if v == voxel_axis:
            return name
    raise AxisError(f"voxel axis {voxel_axis} is not 0, 1 or 2")


def plane_positions_mm(affine: np.ndarray, shape: Sequence[int], axis: str, voxel_indices: Iterable[int]) -> np.ndarray:
    """World coordinate (mm, RAS) of the given slice planes along the anatomical axis.

    Used to compare the physical planes chosen for differently stored copies of one image.
    """
    frame = axis_frames(affine, shape)[check_axis_name(axis)]
    idx = np.asarray(list(voxel_indices), dtype=float)
    centre = (np.asarray(shape[:3], dtype=float) - 1) / 2
    vox = np.tile(centre, (len(idx), 1))
    vox[:, frame.voxel_axis] = idx
    world = vox @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    return world[:, AXES.index(axis)]
