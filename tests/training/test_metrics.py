"""Metrics against independent computations (brute force, MONAI) and the absent-class conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.data import labels as L
from training.metrics import EvaluationError, dice_per_class, hd95_per_class, nanmean, tissue_mean


def test_identical_labels(drawem_label):
    lab = drawem_label()
    d = dice_per_class(lab, lab)
    h = hd95_per_class(lab, lab, (0.5, 0.5, 0.5))
    present = set(np.unique(lab).tolist())
    for c in range(L.NUM_CLASSES):
        if c in present:
            assert d[c] == 1.0 and h[c] == 0.0
        else:
            assert math.isnan(d[c]) and math.isnan(h[c])


def test_known_overlap_dice():
    a = np.zeros((20, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = 3  # 1000 voxels
    b[4:14, 2:12, 2:12] = 3  # shifted by 2: overlap 8·10·10
    expected = 2 * 800 / (1000 + 1000)
    assert dice_per_class(a, b)[3] == pytest.approx(expected)
    # random labels: compare with a direct per-class count
    rng = np.random.default_rng(1)
    p, r = rng.integers(0, 10, (9, 8, 7)), rng.integers(0, 10, (9, 8, 7))
    d = dice_per_class(p, r)
    for c in range(10):
        inter = np.logical_and(p == c, r == c).sum()
        assert d[c] == pytest.approx(2 * inter / ((p == c).sum() + (r == c).sum()))


def test_absent_class_conventions():
    p = np.zeros((6, 6, 6), np.uint8)
    r = np.zeros_like(p)
    r[1:3, 1:3, 1:3] = 5  # class 5 only in the reference
    d = dice_per_class(p, r)
    h = hd95_per_class(p, r, (1, 1, 1))
    assert d[5] == 0.0 and math.isnan(h[5])
    assert math.isnan(d[7]) and dice_per_class(p, r, empty=1.0)[7] == 1.0
    assert tissue_mean({c: (math.nan if c == 5 else 0.5) for c in range(10)}) == pytest.approx(0.5)
    assert tissue_mean({0: 1.0, 4: 1.0, 3: 0.25}) == pytest.approx(0.25)  # backgrounds never count


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Independent HD95: surface voxels by 6-neighbourhood, all pairwise distances."""

    def surface(m):
        pad = np.pad(m, 1)
        core = pad[1:-1, 1:-1, 1:-1]
        inner = core.copy()
        for ax in range(3):
            for sh in (-1, 1):
                inner &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(core & ~inner) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.8, 1.2)])
def test_hd95_against_independent_computations(spacing):
    from monai.metrics import compute_hausdorff_distance

    a = np.zeros((16, 18, 14), np.uint8)
    b = np.zeros_like(a)
    a[3:10, 4:12, 3:9] = 2
    b[5:12, 4:14, 2:9] = 2
    a[11:14, 2:5, 9:12] = 6
    b[11:15, 2:5, 9:12] = 6
    h = hd95_per_class(a, b, spacing)
    for c in (2, 6):
        assert h[c] == pytest.approx(_brute_hd95(a == c, b == c, spacing), abs=1e-6)
        monai = compute_hausdorff_distance(
            (a == c)[None, None],
            (b == c)[None, None],
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        )
        assert h[c] == pytest.approx(float(monai.ravel()[0]), abs=1e-4)


def test_shape_mismatch_raises():
    with pytest.raises(EvaluationError):
        dice_per_class(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


def test_nanmean_skips_nan_and_is_nan_when_empty():
    assert nanmean([1.0, math.nan, 3.0]) == pytest.approx(2.0)
    assert math.isnan(nanmean([math.nan])) and math.isnan(nanmean([]))
