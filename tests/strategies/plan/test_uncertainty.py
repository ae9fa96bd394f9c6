"""Uncertainty ranking finds planted uncertain slices; foreground-aware random stays in the foreground."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from strategies.plan.budget import BudgetConfig, plan_budget
from strategies.plan.extents import entry_from_arrays
from strategies.plan.incremental import new_state, next_assignment, record_submission
from strategies.plan.uncertainty import (
    UncertaintyError,
    rank_slices,
    remaining_uncertainty,
    slice_entropy,
    slice_scores,
)

SHAPE = (18, 22, 20)


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[3:15, 4:19, 2:18] = 1
    return m


def _probs(uncertain: dict[int, list[int]], seed: int = 0, level: float = 1.0) -> np.ndarray:
    """Confident predictions (random class, p≈0.95) except inside the brain on the planted slices."""
    rng = np.random.default_rng(seed)
    c = 10
    cls = rng.integers(0, c, SHAPE)
    p = np.full((c, *SHAPE), 0.05 / (c - 1), np.float32)
    np.put_along_axis(p, cls[None], 0.95, axis=0)
    p += rng.uniform(0, 0.01, p.shape).astype(np.float32)  # small noise: no exact ties
    brain = _mask() != 0
    for axis, idx in uncertain.items():
        for i in idx:
            sel = np.zeros(SHAPE, bool)
            sl = [slice(None)] * 3
            sl[axis] = i
            sel[tuple(sl)] = True
            sel &= brain
            p[:, sel] = (1 - level) * p[:, sel] + level / c
    # planted uncertainty outside the brain must not count
    p[:, 0, :, :] = 1.0 / c
    return p / p.sum(axis=0, keepdims=True)


def _uncertain_slices(probs, voxel_axis, k, *, mask, min_spacing=3, exclude=()):
    """The planner's slice choice: entropy per slice, ranked among the brain slices."""
    other = tuple(a for a in range(3) if a != voxel_axis)
    brain = np.flatnonzero(np.asarray(mask).any(axis=other))
    scores = slice_entropy(probs, voxel_axis, mask)
    return sorted(rank_slices(scores, k, min_spacing=min_spacing, candidates=brain, exclude=exclude))


def test_ranking_picks_planted_uncertain_slices() -> None:
    planted = [4, 9, 15]
    probs = _probs({2: planted})
    assert _uncertain_slices(probs, 2, 3, mask=_mask(), min_spacing=1) == planted
    scores = slice_entropy(probs, 2, _mask())
    assert scores[0] == 0 and scores[1] == 0  # no brain in these slices
    assert set(np.argsort(scores)[-3:]) == set(planted)
    # the mask matters: without it the uncertain sagittal slice 0 (outside the brain) ranks first
    sag = slice_entropy(probs, 0, None)
    assert int(np.argmax(sag)) == 0
    assert 0 not in _uncertain_slices(probs, 0, 2, mask=_mask())


def test_min_spacing_spreads_choices() -> None:
    probs = _probs({2: [8, 9, 10, 15]})
    dense = _uncertain_slices(probs, 2, 3, mask=_mask(), min_spacing=1)
    assert set(dense) <= {8, 9, 10, 15}
    spread = _uncertain_slices(probs, 2, 2, mask=_mask(), min_spacing=3)
    assert 15 in spread and len(set(spread) & {8, 9, 10}) == 1
    # excluded (already annotated) slices never come back; spacing relaxes rather than under-spend
    again = _uncertain_slices(probs, 2, 4, mask=_mask(), min_spacing=5, exclude=[15])
    assert 15 not in again and len(again) == 4
    assert rank_slices(np.array([0.1, 0.9, 0.8, 0.2]), 2, min_spacing=2) == [1, 3]


def test_scan_with_most_uncertainty_left_is_picked() -> None:
    low = _probs({2: [5]}, seed=1)
    high = _probs({2: [5, 8, 12]}, seed=2)
    m = _mask()
    a, b = slice_entropy(low, 2, m), slice_entropy(high, 2, m)
    assert remaining_uncertainty(b, top=3) > remaining_uncertainty(a, top=3)
    # once b's uncertain slices are annotated, a has more left
    assert remaining_uncertainty(a, top=1) > remaining_uncertainty(b, annotated=[5, 8, 12], top=1)
    assert remaining_uncertainty(a, annotated=range(a.size)) == 0.0


def test_planner_and_incremental_use_uncertainty_scores() -> None:
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: scores in voxel order must be mapped correctly
    m = _mask()
    entries = [entry_from_arrays(i, aff, mask=m, scan_age=40.0) for i in ("calm", "busy")]
    scores = {
        "calm": slice_scores(_probs({0: [6]}, seed=3, level=0.3), aff, m),
        "busy": slice_scores(_probs({0: [5, 9, 12]}, seed=4), aff, m),
    }
    cfg = BudgetConfig(3, slices_per_volume=3, axis="sagittal", selection="uncertainty", min_spacing=2)
    plan = plan_budget(entries, cfg, scores=scores)
    (a,) = plan.assignments
    assert a.image == "busy" and a.indices == [5, 9, 12] and a.strategy == "uncertainty"
    st = new_state(BudgetConfig(4, slices_per_volume=3, axis="sagittal", selection="uncertainty"))
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    r = next_assignment(st, entries, "x", now, scores=scores)
    assert r.image == "busy" and r.assignments[0].indices == [5, 9, 12]
    r2 = next_assignment(record_submission(r.state, r.assignments), entries, "x", now, scores=scores)
    assert r2.image == "calm" and 6 in r2.assignments[0].indices and r2.assignments[0].n_slices == 1


def test_bad_probabilities_are_errors() -> None:
    with pytest.raises(UncertaintyError):
        slice_entropy(np.zeros((10, 4, 4)), 2)
    p = _probs({})
    p[0, 0, 0, 0] = np.nan
    with pytest.raises(UncertaintyError, match="NaN"):
        slice_entropy(p, 2)
    with pytest.raises(UncertaintyError, match="mask"):
        slice_entropy(_probs({}), 2, np.ones((3, 3, 3)))
