"""Thick-slice acquisition: blur rendered images along one anatomical axis, labels untouched.

Why: dHCP's T2w volumes are reconstructed from multi-slice stacks whose slices are thicker than
the in-plane resolution, so real images are blurrier along the slice axis than across it. This
simulates one such stack: the rendered intensities are averaged over blocks of
``factor`` voxels along the axis (the thick slices), then linearly interpolated back to the
isotropic grid. The labels stay the high-resolution truth. Deterministic; no randomness.

The anatomical axis → voxel axis map comes from the affine (``nibabel.aff2axcodes``): sagittal =
left–right, coronal = anterior–posterior, axial = superior–inferior.
"""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
from scipy import sparse

from training.data.synthetic.params import SyntheticError
from training.data.synthetic.render import SyntheticSubject

ACQUISITION_AXES: tuple[str, ...] = ("sagittal", "coronal", "axial")
DEFAULT_SLICE_THICKNESS_FACTOR: float = 2.0
MAX_SLICE_THICKNESS_FACTOR: float = 16.0
_CODE_TO_AXIS = {"R": "sagittal", "L": "sagittal", "A": "coronal", "P": "coronal", "S": "axial", "I": "axial"}


def check_acquisition(axis: str | None, factor: float | None) -> tuple[str | None, float]:
    """Validated ``(axis, factor)``; ``axis=None`` is the isotropic default (factor unused)."""
    if factor is None:
        factor = DEFAULT_SLICE_THICKNESS_FACTOR
    try:
        f = float(factor)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"slice thickness factor must be a number, got {factor!r}") from exc
    if not np.isfinite(f) or not 1.0 < f <= MAX_SLICE_THICKNESS_FACTOR:
        raise SyntheticError(f"slice thickness factor must be in (1, {MAX_SLICE_THICKNESS_FACTOR:g}], got {factor!r}")
    if axis is not None and axis not in ACQUISITION_AXES:
        raise SyntheticError(f"acquisition axis must be one of {', '.join(ACQUISITION_AXES)} or None, got {axis!r}")
    return axis, f


def voxel_axis_of(affine: np.ndarray, axis: str) -> int:
    """The voxel axis along anatomical ``axis`` (from ``aff2axcodes``, never assumed)."""
    codes = nib.aff2axcodes(np.asarray(affine, dtype=float))
    matches = [i for i, c in enumerate(codes) if c is not None and _CODE_TO_AXIS[c] == axis]
    if len(matches) != 1:
        raise SyntheticError(f"affine with axis codes {codes} has no single {axis} voxel axis")
    return matches[0]


def thick_slice_operator(n: int, factor: float) -> sparse.csr_matrix:
    """``n × n`` linear map: average over slices ``factor`` voxels thick, interpolate back.

    Slice ``j`` covers voxel edges ``[j·f, (j+1)·f)`` (fractional overlaps weighted; the last slice
    is cut at the volume's end); the voxels are then linearly interpolated between slice centres
    (constant beyond the first and last centre). Rows sum to 1, so constants are kept.
    """
    f = float(factor)
    n_low = int(np.ceil(n / f - 1e-9))
    if n_low < 2:
        raise SyntheticError(f"{n} voxels give fewer than 2 slices of thickness {f:g} voxels")
    lo = np.arange(n_low) * f
    hi = np.minimum(lo + f, n)
    edges = np.arange(n + 1, dtype=float)
    overlap = np.clip(np.minimum(hi[:, None], edges[None, 1:]) - np.maximum(lo[:, None], edges[None, :-1]), 0, None)
    down = overlap / overlap.sum(1, keepdims=True)  # (n_low, n) block means
    centres = (lo + hi) / 2 - 0.5  # in voxel-centre index coordinates
    up = np.stack([np.interp(np.arange(n), centres, e) for e in np.eye(n_low)], axis=1)  # (n, n_low)
    op = up @ down
    op[np.abs(op) < 1e-12] = 0.0
    return sparse.csr_matrix(op.astype(np.float32))


def thick_slices(volume: np.ndarray, voxel_axis: int, factor: float) -> np.ndarray:
    """``volume`` (float32) as acquired with slices ``factor`` voxels thick along ``voxel_axis``."""
    vol = np.asarray(volume, dtype=np.float32)
    op = thick_slice_operator(vol.shape[voxel_axis], factor)
    moved = np.moveaxis(vol, voxel_axis, 0)
    flat = np.ascontiguousarray(moved).reshape(moved.shape[0], -1)
    out = np.asarray(op @ flat, dtype=np.float32).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(out, 0, voxel_axis))


def acquire_thick_slices(
    subject: SyntheticSubject, axis: str, factor: float = DEFAULT_SLICE_THICKNESS_FACTOR
) -> SyntheticSubject:
    """A copy of ``subject`` whose four images are thick-slice acquisitions along ``axis``.

    The label and brain mask are shared unchanged (the high-resolution truth); ``params`` gains
    an ``acquisition`` entry saying how the images were made.
    """
    axis, f = check_acquisition(axis, factor)
    if axis is None:
        raise SyntheticError("acquire_thick_slices needs an acquisition axis")
    v = voxel_axis_of(subject.affine, axis)
    note = acquisition_note(axis, f, subject.affine)
    return dataclasses.replace(
        subject,
        t2w=thick_slices(subject.t2w, v, f),
        t1w=thick_slices(subject.t1w, v, f),
        t2w_raw=thick_slices(subject.t2w_raw, v, f),
        t1w_raw=thick_slices(subject.t1w_raw, v, f),
        params={**subject.params, "acquisition": note},
    )


def acquisition_note(axis: str, factor: float, affine: np.ndarray) -> dict:
    """JSON-ready description of a thick-slice acquisition on the grid of ``affine``."""
    v = voxel_axis_of(affine, axis)
    spacing = float(np.sqrt((np.asarray(affine, float)[:3, v] ** 2).sum()))
    return {
        "type": "thick-slice",
        "axis": axis,
        "voxel_axis": v,
        "slice_thickness_factor": float(factor),
        "slice_thickness_mm": round(float(factor) * spacing, 6),
        "images": "block mean over slice_thickness_factor voxels along the axis, linearly interpolated back",
        "labels": "unchanged: the isotropic high-resolution truth",
    }
