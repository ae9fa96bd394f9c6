"""Budget planner properties: exact spending, determinism, brain/margins, dispersion, age strata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from strategies.plan.axes import AXES
from strategies.plan.budget import BudgetConfig, BudgetError, Plan, plan_budget
from strategies.plan.extents import PlanEntry, entry_from_arrays, margin_window
from strategies.plan.selection import scan_order


def _blob_mask(rng: np.random.Generator, shape=(24, 30, 28)) -> np.ndarray:
    """An off-centre ellipsoid 'brain' whose extent differs per axis (and per scan)."""
    grid = np.indices(shape).astype(float)
    centre = np.array(shape) * rng.uniform(0.4, 0.6, 3)
    radii = np.array(shape) * rng.uniform(0.22, 0.35, 3)
    d = sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return (d <= 1).astype(np.uint8)


def make_entries(n: int, seed: int = 0, ages: list[float] | None = None) -> list[PlanEntry]:
    rng = np.random.default_rng(seed)
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    return [
        entry_from_arrays(
            f"scan{i:03d}",
            aff,
            mask=_blob_mask(rng),
            scan_age=None if ages is None else ages[i],
        )
        for i in range(n)
    ]


ENTRIES = make_entries(20, ages=list(np.linspace(28, 44, 20)))

CONFIGS = [
    BudgetConfig(45, 0.33, "axial", 0.1, "equidistant", 0),
    BudgetConfig(45, 1.0, "sagittal", 0.0, "random", 1),
    BudgetConfig(37, 0.5, "random", 0.15, "equidistant", 2),
    BudgetConfig(50, 0.2, "mixed", 0.05, "random", 3),
    BudgetConfig(9, None, "coronal", 0.2, "random", 4, slices_per_volume=1),
    BudgetConfig(23, 0.33, "mixed", 0.1, "equidistant", 5, slices_per_volume=2),
]


def _slices(plan: Plan) -> set[tuple[str, str, int]]:
    return {(a.image, a.axis, i) for a in plan.assignments for i in a.indices}


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.axis}-{c.dispersion}-{c.selection}")
def test_budget_spent_exactly_within_brain_and_margins(cfg: BudgetConfig) -> None:
    plan = plan_budget(ENTRIES, cfg)
    assert plan.shortfall is None
    assert plan.spent == cfg.total_slices
    assert len(_slices(plan)) == cfg.total_slices  # no slice twice
    by_id = {e.id: e for e in ENTRIES}
    for a in plan.assignments:
        e = by_id[a.image]
        a.check_image(e.shape, e.affine)
        frame = e.frames[a.axis]
        brain_vox = set(e.brain_slices_per_voxel_axis[frame.voxel_axis])
        assert set(a.indices) <= brain_vox, "slice without brain assigned"
        brain = e.brain_slices(a.axis)
        lo, hi = margin_window(int(brain.min()), int(brain.max()), cfg.margin)
        can = frame.to_canonical(a.indices)
        assert can.min() >= lo and can.max() <= hi, "slice inside the margins"
        cut = int(np.floor(cfg.margin * (brain.max() - brain.min() + 1)))
        assert lo - brain.min() == cut and brain.max() - hi == cut


@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=lambda c: c.axis)
def test_plan_is_deterministic_and_seed_dependent(cfg: BudgetConfig) -> None:
    a = plan_budget(ENTRIES, cfg)
    b = plan_budget(list(reversed(ENTRIES)), cfg)  # input order does not matter
    assert json.dumps(a.to_json()) == json.dumps(b.to_json())
    others = [plan_budget(ENTRIES, BudgetConfig(**{**cfg.to_json(), "seed": s})) for s in range(10, 14)]
    assert any(_slices(o) != _slices(a) for o in others)
    assert all(o.spent == a.spent for o in others)


def test_dispersion_one_gives_whole_volumes() -> None:
    for axis in AXES:
        cfg = BudgetConfig(10_000, 1.0, axis, 0.1, "equidistant", 0)
        plan = plan_budget(ENTRIES[:3], cfg)
        assert plan.shortfall is not None and plan.shortfall.slices == 10_000 - plan.spent
        for e in ENTRIES[:3]:
            (a,) = plan.for_image(e.id)
            assert a.axis == axis
            expected = set(e.frames[axis].to_voxel(e.usable_slices(axis, 0.1)).tolist())
            assert set(a.indices) == expected


def test_dispersion_sets_slices_per_volume_and_one_slice_mode() -> None:
    cfg = BudgetConfig(40, 0.33, "axial", 0.0)
    plan = plan_budget(ENTRIES, cfg)
    by_id = {e.id: e for e in ENTRIES}
    counts = [a.n_slices for a in plan.assignments]
    for a in plan.assignments[:-1]:  # the last scan may receive the remainder only
        n = by_id[a.image].usable_slices("axial").size
        assert a.n_slices == max(1, int(np.floor(0.33 * n + 0.5)))
    assert counts[-1] <= max(counts)
    one = plan_budget(ENTRIES, BudgetConfig(7, slices_per_volume=1, axis="sagittal"))
    assert one.spent == 7 and len(one.images) == 7 and all(a.n_slices == 1 for a in one.assignments)


def test_random_axis_draws_one_axis_per_volume_and_mixed_uses_all_three() -> None:
    plan = plan_budget(ENTRIES, BudgetConfig(400, 0.3, "random", 0.0))
    axes_per_scan = {i: {a.axis for a in plan.for_image(i)} for i in plan.images}
    assert all(len(v) == 1 for v in axes_per_scan.values())
    assert len(set().union(*axes_per_scan.values())) > 1
    mixed = plan_budget(ENTRIES, BudgetConfig(400, 0.3, "mixed", 0.0))
    for i in mixed.images:
        per_axis = {a.axis: a.n_slices for a in mixed.for_image(i)}
        assert set(per_axis) == set(AXES)
        assert max(per_axis.values()) - min(per_axis.values()) <= 1


def test_shortfall_when_scans_run_out() -> None:
    plan = plan_budget(ENTRIES[:2], BudgetConfig(1000, 0.33, "axial"))
    assert plan.shortfall is not None
    assert plan.spent + plan.shortfall.slices == 1000
    assert "2 scans" in plan.shortfall.reason
    empty = plan_budget(ENTRIES, BudgetConfig(0, 0.5, "axial"))
    assert empty.spent == 0 and empty.shortfall is None


def test_scan_without_brain_is_skipped() -> None:
    aff = np.eye(4)
    blank = entry_from_arrays("blank", aff, mask=np.zeros((8, 8, 8), np.uint8))
    plan = plan_budget([blank, *ENTRIES[:2]], BudgetConfig(5, 0.2, "axial"))
    assert "blank" not in plan.images and plan.skipped[0][0] == "blank"


def test_age_stratification_small_budget_reaches_both_groups() -> None:
    ages = [float(a) for a in np.linspace(27, 32, 10)] + [float(a) for a in np.linspace(38, 44, 30)]
    entries = make_entries(40, seed=7, ages=ages)
    young = {e.id for e in entries if e.scan_age < 35}
    for seed in range(25):
        # a budget for exactly 4 whole volumes
        order = scan_order([e.id for e in entries], [e.scan_age for e in entries], seed)
        by_id = {e.id: e for e in entries}
        budget = sum(by_id[i].usable_slices("axial").size for i in order[:4])
        plan = plan_budget(entries, BudgetConfig(budget, 1.0, "axial", 0.0, seed=seed))
        assert len(plan.images) == 4
        chosen = set(plan.images)
        assert chosen & young and chosen - young, f"seed {seed}: one age group only"


def test_scan_sets_are_nested_across_budgets() -> None:
    small = plan_budget(ENTRIES, BudgetConfig(20, 0.33, "axial", seed=3))
    large = plan_budget(ENTRIES, BudgetConfig(60, 0.33, "axial", seed=3))
    assert set(small.images) <= set(large.images)


def test_plan_json_round_trip() -> None:
    plan = plan_budget(ENTRIES, CONFIGS[3])
    data = json.loads(json.dumps(plan.to_json()))
    assert set(data) >= {"config", "assignments", "shortfall"}
    again = Plan.from_json(data)
    assert again.config == plan.config
    assert [a.to_json() for a in again.assignments] == data["assignments"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total_slices": -1},
        {"total_slices": 1.5},
        {"total_slices": 10, "dispersion": 0.0},
        {"total_slices": 10, "dispersion": 1.2},
        {"total_slices": 10, "axis": "oblique"},
        {"total_slices": 10, "margin": 0.5},
        {"total_slices": 10, "selection": "best"},
        {"total_slices": 10, "seed": -3},
        {"total_slices": 10, "slices_per_volume": 0},
    ],
)
def test_bad_config_is_a_clear_error(kwargs: dict) -> None:
    with pytest.raises(BudgetError):
        BudgetConfig(**kwargs)


def test_duplicate_ids_and_uncertainty_without_scores_are_errors() -> None:
    with pytest.raises(BudgetError, match="duplicate"):
        plan_budget([ENTRIES[0], ENTRIES[0]], BudgetConfig(3))
    with pytest.raises(BudgetError, match="scores"):
        plan_budget(ENTRIES, BudgetConfig(3, selection="uncertainty"))


def test_strategies_import_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import strategies.plan.axes, strategies.plan.assignment, strategies.plan.budget, strategies.plan.extents\n"
        "import strategies.plan.incremental, strategies.annotate.masks\n"
        "import strategies.plan.uncertainty\n"
        "bad = [m for m in ('torch', 'monai', 'monailabel') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scan_order_with_partly_unknown_ages() -> None:
    ids = [f"s{i}" for i in range(15)]
    ages = [None if i % 3 == 0 else 30.0 + i for i in range(15)]
    a = scan_order(ids, ages, 1)
    assert sorted(a) == sorted(ids)
    assert a == scan_order(list(reversed(ids)), list(reversed(ages)), 1)
    assert a != scan_order(ids, ages, 2)
