"""Assignments → partial labels; merging rounds; the SliceAssignment JSON contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strategies.annotate.masks import (
    MaskError,
    assignment_mask,
    merge_partial,
    partial_label,
)
from strategies.annotate.submission import convert_submission
from strategies.plan.assignment import FIELDS, AssignmentError, SliceAssignment
from training.data.labels import IGNORE


def _label(shape=(10, 12, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, shape).astype(np.uint8)


def test_slice_assignment_json_contract() -> None:
    a = SliceAssignment("img1", "axial", 2, [5, 1, 3], "equidistant", 2, "ann-1", "2026-01-02T03:04:05+00:00")
    d = a.to_json()
    assert tuple(d) == FIELDS
    assert d["indices"] == [1, 3, 5]
    assert SliceAssignment.from_json(json.loads(json.dumps(d))) == a


@pytest.mark.parametrize(
    "data",
    [
        {"image": "x", "axis": "oblique", "voxel_axis": 0, "indices": [1]},
        {"image": "x", "axis": "axial", "voxel_axis": 3, "indices": [1]},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [-1]},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [1.5]},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [2, 2]},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": 4},
        {"image": "", "axis": "axial", "voxel_axis": 2, "indices": [1]},
        {"axis": "axial", "voxel_axis": 2, "indices": [1]},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [1], "colour": "red"},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [1], "round": -1},
        {"image": "x", "axis": "axial", "voxel_axis": 2, "indices": [1], "assigned_at": "yesterday"},
    ],
)
def test_bad_assignment_json_is_a_clear_error(data: dict) -> None:
    with pytest.raises(AssignmentError):
        SliceAssignment.from_json(data)


def test_index_out_of_range_is_a_clear_error() -> None:
    a = SliceAssignment("img", "axial", 2, [7, 8])
    with pytest.raises(AssignmentError, match="out of range"):
        a.check_image((10, 12, 8))
    with pytest.raises(MaskError, match="out of range"):
        partial_label(_label(), a)


def test_partial_label_keeps_assigned_slices_only_and_unites_axes() -> None:
    lab = _label()
    a1 = SliceAssignment("img", "axial", 2, [1, 4])
    a2 = SliceAssignment("img", "sagittal", 0, [7], round=1)
    part = partial_label(lab, [a1, a2])
    assert part.dtype == np.uint8 and part.shape == lab.shape
    mask = np.zeros(lab.shape, bool)
    mask[:, :, [1, 4]] = True
    mask[7] = True
    np.testing.assert_array_equal(part[mask], lab[mask])
    assert np.all(part[~mask] == IGNORE)
    np.testing.assert_array_equal(assignment_mask(lab.shape, [a1, a2]), mask)
    with pytest.raises(MaskError, match="several images"):
        partial_label(lab, [a1, SliceAssignment("other", "axial", 2, [0])])
    with pytest.raises(MaskError):
        partial_label(np.full(lab.shape, 12, np.uint8), a1)


def test_merge_keeps_every_annotated_voxel_of_both_rounds() -> None:
    lab_old, lab_new = _label(seed=1), _label(seed=2)
    old = partial_label(lab_old, SliceAssignment("img", "axial", 2, [1, 2, 3]))
    new = partial_label(lab_new, SliceAssignment("img", "coronal", 1, [0, 5, 6]))
    old_copy, new_copy = old.copy(), new.copy()
    merged = merge_partial(old, new)
    np.testing.assert_array_equal(old, old_copy)  # inputs untouched
    np.testing.assert_array_equal(new, new_copy)
    annotated = (old != IGNORE) | (new != IGNORE)
    np.testing.assert_array_equal(merged != IGNORE, annotated)
    # the newer round wins where both annotated, the older value survives elsewhere
    both = (old != IGNORE) & (new != IGNORE)
    assert both.any()
    np.testing.assert_array_equal(merged[both], new[both])
    only_old = (old != IGNORE) & (new == IGNORE)
    np.testing.assert_array_equal(merged[only_old], old[only_old])


def test_merge_shape_mismatch_and_bad_values_are_errors() -> None:
    with pytest.raises(MaskError, match="shape"):
        merge_partial(np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(MaskError):
        merge_partial(np.zeros((4, 4, 4), np.uint8), np.full((4, 4, 4), 17, np.uint8))


def test_slicer_submission_becomes_partial_and_merges() -> None:
    lab = _label()
    submitted = np.zeros_like(lab)  # Slicer sends 0 on unpainted slices
    submitted[:, :, 3] = lab[:, :, 3]
    prev = partial_label(lab, SliceAssignment("img", "sagittal", 0, [2]))
    out = convert_submission(submitted, [SliceAssignment("img", "axial", 2, [3])], previous=prev).partial
    np.testing.assert_array_equal(out[:, :, 3], lab[:, :, 3])
    np.testing.assert_array_equal(out[2], lab[2])
    assert (out != IGNORE).sum() == lab[:, :, 3].size + lab[2].size - lab.shape[1]
