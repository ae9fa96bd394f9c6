"""The label contract: values, shapes and affines are checked with clear messages."""

import numpy as np
import pytest

from training.data import labels


def test_class_table_is_complete_and_consistent():
    values = [c.value for c in labels.CLASSES]
    assert values == list(range(labels.NUM_CLASSES)) == list(range(10))
    assert labels.IGNORE not in values
    assert set(labels.TISSUE) == set(values) - set(labels.BACKGROUND)
    assert len({c.key for c in labels.CLASSES}) == labels.NUM_CLASSES
    assert len({c.color for c in labels.CLASSES}) == labels.NUM_CLASSES
    colours = labels.slicer_colors()
    assert all(0.0 <= v <= 1.0 for rgb in colours.values() for v in rgb)
    table = labels.class_table()
    assert table[-1]["value"] == labels.IGNORE


@pytest.mark.parametrize("bad", [10, 17, 254, -1])
def test_validator_rejects_values_outside_classes(bad):
    arr = np.zeros((4, 5, 6), np.int16)
    arr[1, 2, 3] = bad
    with pytest.raises(labels.LabelError, match=str(bad)):
        labels.validate_label(arr)


def test_validator_accepts_classes_and_ignore():
    arr = np.arange(4 * 5 * 6).reshape(4, 5, 6) % 10
    arr[0] = labels.IGNORE
    out = labels.validate_label(arr, image_shape=(4, 5, 6), label_affine=np.eye(4), image_affine=np.eye(4))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_validator_rejects_ignore_when_full_label_required():
    arr = np.zeros((3, 3, 3), np.uint8)
    arr[0, 0, 0] = labels.IGNORE
    with pytest.raises(labels.LabelError, match="outside"):
        labels.validate_label(arr, allow_ignore=False)


def test_validator_rejects_shape_and_affine_mismatch():
    arr = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(labels.LabelError, match="shape"):
        labels.validate_label(arr, image_shape=(4, 5, 7))
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    with pytest.raises(labels.LabelError, match="affine"):
        labels.validate_label(arr, label_affine=shifted, image_affine=np.eye(4))
    with pytest.raises(labels.LabelError, match="3D"):
        labels.validate_label(np.zeros((4, 5), np.uint8))


def test_validator_rejects_fractional_and_nan_labels():
    arr = np.zeros((3, 3, 3), np.float32)
    arr[0, 0, 0] = 2.5
    with pytest.raises(labels.LabelError, match="non-integer"):
        labels.validate_label(arr)
    arr[0, 0, 0] = np.nan
    with pytest.raises(labels.LabelError, match="NaN"):
        labels.validate_label(arr)


def test_annotated_mask_is_label_not_ignore():
    arr = np.array([0, 3, 255, 9, 255], np.uint8)
    np.testing.assert_array_equal(labels.annotated_mask(arr), [True, True, False, True, False])
    assert labels.is_partial(arr)
    assert not labels.is_partial(arr[:2])
