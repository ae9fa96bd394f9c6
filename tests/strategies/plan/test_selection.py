"""The newer slice selections: ClaSP-PE-like (class-stratified, power-noised entropy) and foreground-aware
random. Seeded, never outside the brain, every class gets picks; the per-class statistics they read."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from strategies.plan.budget import BudgetConfig, BudgetError, plan_budget
from strategies.plan.extents import entry_from_arrays
from strategies.plan.incremental import new_state, next_assignment
from strategies.plan.selection import (
    CLASPE_BETA_MAX,
    SCORED_SELECTIONS,
    SELECTIONS,
    ClassSlices,
    choose_slices,
    claspe_beta,
    class_slices_for,
    entry_rng,
    fg_random_slices,
)
from strategies.plan.uncertainty import (
    CLASS_ENTROPY,
    CLASS_VOXELS,
    MODEL_ROUND,
    class_counts,
    class_key,
    class_slice_sums,
    slice_scores,
)
from training.data.labels import BRAIN, NUM_CLASSES

SHAPE = (16, 18, 24)


def _label(seed: int) -> np.ndarray:
    """Brain in axial slices 4–19 (of 24); big tissues everywhere, small classes in a few slices only."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:14, 2:16, 4:20] = rng.choice([1, 2, 3], size=(12, 14, 16))
    for c in (5, 6, 7, 8, 9):  # each small class sits in 1–3 adjacent axial slices somewhere in the brain
        z = int(rng.integers(4, 18))
        lab[6:9, 6:9, z : z + int(rng.integers(1, 3))] = c
    return lab


def _probs(lab: np.ndarray, seed: int) -> np.ndarray:
    """Confident on the big tissues, uncertain on the cortex (class 2): entropy mass lives where class 2 is."""
    rng = np.random.default_rng(seed)
    p = np.full((NUM_CLASSES, *SHAPE), 0.01, np.float32)
    np.put_along_axis(p, lab[None].astype(np.int64), 0.9, axis=0)
    unsure = lab == 2
    p[:, unsure] += rng.uniform(0.2, 0.6, (NUM_CLASSES, int(unsure.sum()))).astype(np.float32)
    return p / p.sum(axis=0, keepdims=True)


def _setup(seed: int):
    lab = _label(seed)
    aff = np.diag([-1.0, 1.0, 1.0, 1.0])
    entry = entry_from_arrays(f"scan{seed}", aff, label=lab)
    brain = np.isin(lab, BRAIN)
    scores = slice_scores(_probs(lab, seed), aff, brain, model_round=0)
    return lab, entry, scores


def test_selection_names_have_one_source() -> None:
    assert {"claspe", "fgrandom"} <= set(SELECTIONS)
    assert set(SCORED_SELECTIONS) <= set(SELECTIONS)


def test_class_slice_sums_match_a_brute_force_count() -> None:
    lab = _label(0)
    w = np.random.default_rng(1).random(SHAPE)
    for va in range(3):
        got = class_slice_sums(lab, va, NUM_CLASSES, weights=w)
        counts = class_slice_sums(lab, va, NUM_CLASSES)
        for c in (0, 2, 9):
            mask = np.moveaxis(lab == c, va, 0)
            assert np.allclose(got[c], (np.moveaxis(w, va, 0) * mask).reshape(SHAPE[va], -1).sum(axis=1))
            assert np.array_equal(counts[c], mask.reshape(SHAPE[va], -1).sum(axis=1))
    ignored = lab.copy()
    ignored[0] = 255  # the ignore value never counts as a class
    assert class_slice_sums(ignored, 2, NUM_CLASSES).sum() == (lab[1:] >= 0).sum()


def test_scores_carry_per_class_statistics_in_canonical_order() -> None:
    lab, entry, scores = _setup(0)
    for axis in ("sagittal", "coronal", "axial"):
        n = entry.frames[axis].size
        assert scores[axis].shape == (n,)
        assert scores[class_key(axis, CLASS_ENTROPY)].shape == (NUM_CLASSES, n)
        assert scores[class_key(axis, CLASS_VOXELS)].shape == (NUM_CLASSES, n)
    assert int(scores[MODEL_ROUND]) == 0
    # sagittal is flipped (LAS affine): canonical order reverses the voxel order
    cs = class_slices_for(entry, "sagittal", scores)
    assert cs is not None and entry.frames["sagittal"].flipped
    assert np.array_equal(cs.voxels, scores[class_key("sagittal", CLASS_VOXELS)][:, ::-1])
    gt = class_slices_for(entry, "axial", class_counts(lab, entry.affine, NUM_CLASSES))
    assert gt is not None and gt.entropy is None and gt.voxels.sum() == lab.size


def test_beta_schedule_grows_and_stops() -> None:
    betas = [claspe_beta(r) for r in range(20)]
    assert betas == sorted(betas) and betas[0] < betas[1] and betas[-1] == CLASPE_BETA_MAX


def _pick(entry, scores, selection, seed, k, visit=0):
    ax = "axial"
    usable = entry.usable_slices(ax, 0.1)
    s = scores.get(ax)
    return choose_slices(usable, k, selection, entry_rng(seed, entry.id, f"slices:{ax}", visit),
                         scores=None if s is None else s[::-1] if entry.frames[ax].flipped else s,
                         min_spacing=2, classes=class_slices_for(entry, ax, scores)), usable


@pytest.mark.parametrize("selection", ["claspe", "fgrandom"])
def test_seeded_deterministic_and_never_outside_the_brain(selection) -> None:
    for seed in range(6):
        lab, entry, scores = _setup(seed)
        a, usable = _pick(entry, scores, selection, seed, 6)
        b, _ = _pick(entry, scores, selection, seed, 6)
        assert np.array_equal(a, b) and a.size == 6 and len(set(a.tolist())) == 6
        assert set(a.tolist()) <= set(usable.tolist())
        # every chosen slice holds brain (canonical axial index = voxel index here: the z axis is not flipped)
        assert all(np.isin(lab[:, :, i], BRAIN).any() for i in entry.frames["axial"].to_voxel(a))
    draws = {tuple(_pick(_setup(0)[1], _setup(0)[2], selection, s, 4)[0].tolist()) for s in range(8)}
    assert len(draws) > 1  # the seed matters


def test_claspe_gives_every_predicted_class_a_pick() -> None:
    """Property over seeded random layouts: with at least as many picks as classes, each brain class the
    model predicts in a usable slice is shown by some chosen slice; plain entropy ranking misses some."""
    missed_by_entropy = 0
    for seed in range(12):
        lab, entry, scores = _setup(seed)
        usable = entry.usable_slices("axial", 0.1)
        present = {c for c in BRAIN if np.isin(lab[:, :, usable], [c]).any()}
        k = len(present)
        chosen, _ = _pick(entry, scores, "claspe", seed, k)
        shown = {c for c in BRAIN if np.isin(lab[:, :, chosen], [c]).any()}
        assert present <= shown, (seed, present - shown)
        top, _ = _pick(entry, scores, "uncertainty", seed, k)
        missed_by_entropy += bool(present - {c for c in BRAIN if np.isin(lab[:, :, top], [c]).any()})
    assert missed_by_entropy > 0  # the cortex's uncertainty outvotes the small structures


def test_fgrandom_share_and_fallback() -> None:
    cand = np.arange(30)
    voxels = np.zeros((NUM_CLASSES, 30))
    voxels[9, [3, 17]] = 5  # the only hippocampus slices
    voxels[3, :] = 100
    rng = np.random.default_rng(0)
    picks = [fg_random_slices(cand, 2, np.random.default_rng(s), voxels, share=1.0) for s in range(40)]
    # with every pick class-seeded, the rare class (1 of 2 classes) is picked about half the time
    with_hip = sum(bool({3, 17} & set(p.tolist())) for p in picks)
    assert 10 <= with_hip <= 40
    plain = fg_random_slices(cand, 5, rng, None)
    assert plain.size == 5 and set(plain.tolist()) <= set(cand.tolist())
    one = [fg_random_slices(cand, 1, np.random.default_rng(s), voxels, share=0.33).size for s in range(10)]
    assert one == [1] * 10


def test_planner_and_loop_accept_the_new_selections() -> None:
    _, e0, s0 = _setup(0)
    _, e1, s1 = _setup(1)
    scores = {e0.id: s0, e1.id: s1}
    with pytest.raises(BudgetError, match="claspe"):
        plan_budget([e0, e1], BudgetConfig(8, dispersion=0.3, selection="claspe"))
    plan = plan_budget([e0, e1], BudgetConfig(8, dispersion=0.3, margin=0.1, selection="claspe"), scores=scores)
    assert plan.spent == 8 and {a.strategy for a in plan.assignments} == {"claspe"}
    st = new_state(BudgetConfig(8, dispersion=0.3, margin=0.1, selection="fgrandom"))
    r = next_assignment(st, [e0, e1], "x", datetime(2026, 1, 1, tzinfo=timezone.utc), scores=scores)
    assert r.assignments and r.assignments[0].strategy == "fgrandom"
    # a cold start (no model yet): claspe falls back to equidistant slices
    cold = choose_slices(np.arange(10), 2, "claspe", np.random.default_rng(0))
    assert cold.tolist() == [2, 7]
    assert isinstance(ClassSlices(), ClassSlices)
