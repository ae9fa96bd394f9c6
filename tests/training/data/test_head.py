"""The one head detector: a head in noisy air, exact backgrounds, degenerate volumes, mask and box agree."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from training.data.head import head_box, head_mask


def _head_in_air(shape=(40, 44, 36), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid head (dark rim, bright inside) in noisy air with a bright speck far from it."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2 / np.array([0.6, 0.7, 0.55])[:, None, None, None] ** 2).sum(0))
    head = r < 1.0
    img = rng.normal(5.0, 2.0, shape)
    img[head] = 40.0
    img[r < 0.8] = 100.0
    img[1:3, 1:3, 1:3] = 100.0  # an artefact in the air: not the largest component
    return img.astype(np.float32), head


def test_head_mask_finds_the_head_and_drops_specks():
    img, head = _head_in_air()
    mask = head_mask(img, (1.0, 1.0, 1.0))
    assert mask.shape == img.shape and mask.dtype == bool
    assert not mask[:4, :4, :4].any()
    assert (mask & head).sum() > 0.95 * head.sum()
    # the 2 mm smoothing and working grid blur the edge by a few voxels, never more
    assert not (mask & ~ndimage.binary_dilation(head, iterations=4)).any()


def test_head_box_contains_the_mask_and_the_margin():
    img, head = _head_in_air()
    lo, hi = head_box(img, (1.0, 1.0, 1.0), margin_mm=2.0)
    mask = head_mask(img, (1.0, 1.0, 1.0))
    idx = np.argwhere(mask)
    assert (lo <= np.maximum(idx.min(0) - 2, 0)).all() and (hi >= np.minimum(idx.max(0) + 3, img.shape)).all()
    assert (lo >= 0).all() and (hi <= np.array(img.shape)).all()
    assert (hi - lo < np.array(img.shape)).any()


def test_exact_background_is_what_differs_from_it():
    img = np.zeros((30, 30, 30), np.float32)
    img[8:20, 10:22, 5:25] = -0.5  # normalised tissue may be negative
    mask = head_mask(img, background=0.0)
    np.testing.assert_array_equal(mask, img != 0)
    lo, hi = head_box(img, (1.0, 1.0, 1.0), margin_mm=0.0, background=0.0)
    # the 2 mm grid samples even voxels: hi gains one working voxel, lo may lose one (the margin covers it)
    assert list(lo) == [8, 10, 6] and list(hi) == [22, 24, 28]


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_nothing_to_find(fill):
    img = np.full((12, 12, 12), fill, np.float32)
    assert not head_mask(img).any()
    assert head_box(img, (1.0, 1.0, 1.0)) is None


def test_non_finite_voxels_count_as_air():
    img, head = _head_in_air()
    img[0, :, :] = np.inf
    mask = head_mask(img, (1.0, 1.0, 1.0))
    assert not mask[0].any() and (mask & head).sum() > 0.95 * head.sum()


def test_needs_a_3d_volume():
    with pytest.raises(ValueError):
        head_mask(np.zeros((4, 4)))
    with pytest.raises(ValueError):
        head_box(np.zeros((1, 4, 4, 4)), (1.0, 1.0, 1.0))
