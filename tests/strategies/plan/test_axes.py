"""Axis names come from the affine: RAS, LPS and permuted copies of one volume get the same planes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from strategies.annotate.masks import partial_label
from strategies.plan.assignment import SliceAssignment
from strategies.plan.axes import AXES, AxisError, anatomical_axes, axis_frames, plane_positions_mm
from strategies.plan.budget import BudgetConfig, plan_budget
from strategies.plan.extents import entry_from_arrays

TARGETS = [("R", "A", "S"), ("L", "P", "S"), ("L", "P", "I"), ("A", "S", "R"), ("P", "I", "L"), ("S", "L", "A")]


def _ras_volume() -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric label volume (so every flip matters) with anisotropic spacing and an offset."""
    rng = np.random.default_rng(0)
    shape = (22, 30, 26)
    grid = np.indices(shape).astype(float)
    d = ((grid[0] - 9) / 7) ** 2 + ((grid[1] - 17) / 10) ** 2 + ((grid[2] - 11) / 8) ** 2
    label = np.where(d <= 1, rng.integers(1, 10, shape), 0).astype(np.uint8)
    label[label == 4] = 3
    aff = np.diag([1.2, 0.8, 1.0, 1.0])
    aff[:3, 3] = [-13.0, 20.0, 5.0]
    return label, aff


def _reorient(data: np.ndarray, affine: np.ndarray, codes: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray]:
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(codes))
    new = apply_orientation(data, ornt)
    return np.ascontiguousarray(new), affine @ inv_ornt_aff(ornt, data.shape)


def test_anatomical_axes_follow_the_affine() -> None:
    label, aff = _ras_volume()
    assert anatomical_axes(aff) == {"sagittal": 0, "coronal": 1, "axial": 2}
    for codes in TARGETS:
        _, a2 = _reorient(label, aff, codes)
        assert nib.aff2axcodes(a2) == codes
        axes = anatomical_axes(a2)
        for name, letters in zip(AXES, ("LR", "PA", "IS"), strict=True):
            assert codes[axes[name]] in letters
    with pytest.raises(AxisError):
        anatomical_axes(np.zeros((4, 4)))
    with pytest.raises(AxisError):
        anatomical_axes(np.eye(3))


@pytest.mark.parametrize("axis", [*AXES, "random", "mixed"])
@pytest.mark.parametrize("selection", ["equidistant", "random"])
def test_same_physical_planes_under_reorientation(axis: str, selection: str) -> None:
    label, aff = _ras_volume()
    cfg = BudgetConfig(total_slices=12, dispersion=0.4, axis=axis, margin=0.1, selection=selection, seed=5)
    reference = None
    ref_partial = None
    for codes in TARGETS:
        data, a2 = _reorient(label, aff, codes)
        entry = entry_from_arrays("scan", a2, label=data)
        plan = plan_budget([entry], cfg)
        assert plan.spent > 0
        planes = {
            (a.axis, round(float(p), 4))
            for a in plan.assignments
            for p in plane_positions_mm(a2, data.shape, a.axis, a.indices)
        }
        # the partial label, brought back to RAS, is voxel-for-voxel the same
        part = partial_label(data, plan.assignments, a2)
        back, _ = _reorient(part, a2, ("R", "A", "S"))
        if reference is None:
            reference, ref_partial = planes, back
        else:
            assert planes == reference, f"{codes}: different physical planes"
            np.testing.assert_array_equal(back, ref_partial)


def test_canonical_frame_maps_lps_index_to_mirror() -> None:
    label, aff = _ras_volume()
    data, a2 = _reorient(label, aff, ("L", "P", "S"))
    frames = axis_frames(a2, data.shape)
    assert frames["sagittal"].flipped and frames["coronal"].flipped and not frames["axial"].flipped
    n = data.shape[0]
    assert frames["sagittal"].to_voxel([0, 3]).tolist() == [n - 1, n - 4]


def test_assignment_axis_checked_against_affine() -> None:
    label, aff = _ras_volume()
    data, a2 = _reorient(label, aff, ("A", "S", "R"))
    good = SliceAssignment("scan", "axial", 1, [3])
    good.check_image(data.shape, a2)
    with pytest.raises(ValueError, match="voxel axis"):
        SliceAssignment("scan", "axial", 2, [3]).check_image(data.shape, a2)
