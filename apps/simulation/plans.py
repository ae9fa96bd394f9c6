"""Turn a condition into slice assignments with the budget planner, spending exactly the same budget.

Counting rule for the baseline (documented in the README): a fully labelled volume costs the
number of its *usable axial slices* — slices along the count axis (axial by default) that contain
brain, minus the margin at each end, exactly the slices the planner would offer for that volume
along that axis at dispersion 1.0. The baseline trains on the dense label of those volumes (as the
paper did); every other condition gets a plan over the training pool whose total number of
slices equals that count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apps.simulation.conditions import ONE_SLICE, Condition
from apps.simulation.data import SimulationError


def pool_order(entries: Sequence[Any], seed: int, count_axis: str = "axial", margin: float = 0.0) -> list[Any]:
    """The training pool in the planner's own seeded, age-stratified scan order for this seed.

    The baseline takes its volumes from the front of this order; the planner visits scans in the
    same order, so every dispersed condition's scans include the baseline's (nested sets, as in
    the paper where the 3x scans contain the baseline's).
    """
    from strategies.plan.budget import BudgetConfig, ordered_entries

    return list(ordered_entries(list(entries), BudgetConfig(total_slices=0, axis=count_axis, margin=margin,
                                                            seed=int(seed))))


def baseline_volumes(ordered: Sequence[Any], n: int, count_axis: str, margin: float) -> tuple[list[Any], int]:
    """The first ``n`` volumes (in pool order) with usable slices, and their usable-slice count."""
    chosen, total = [], 0
    for e in ordered:
        k = len(e.usable_slices(count_axis, margin))
        if k == 0:
            continue
        chosen.append(e)
        total += k
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise SimulationError(f"only {len(chosen)} training scan(s) have brain slices; the baseline needs {n}")
    return chosen, total


def baseline_assignments(volumes: Sequence[Any], count_axis: str, margin: float, seed: int) -> list[Any]:
    """Assignments that *record* what the baseline pays for (all usable slices along the count axis)."""
    from strategies.plan.assignment import SliceAssignment

    out = []
    for e in volumes:
        frame = e.frames[count_axis]
        vox = sorted(int(i) for i in frame.to_voxel(e.usable_slices(count_axis, margin)))
        out.append(SliceAssignment(e.id, count_axis, frame.voxel_axis, vox, strategy="full-volume", round=0))
    return out


def condition_assignments(cond: Condition, ordered: Sequence[Any], total: int, seed: int,
                          scores: Mapping[str, Any] | None = None) -> list[Any]:
    """Plan ``total`` slices over the pool for a dispersed condition; error if the pool cannot pay for it.

    ``scores`` (per scan, ``strategies.plan.uncertainty`` form): the oracle's per-class slice counts
    that foreground-aware random (``fgrandom``) seeds its class picks on."""
    from strategies.plan.budget import BudgetConfig, plan_budget

    kwargs: dict[str, Any] = {
        "total_slices": int(total),
        "axis": cond.axis,
        "margin": float(cond.margin),
        "selection": cond.selection,
        "seed": int(seed),
    }
    if cond.dispersion == ONE_SLICE:
        kwargs["dispersion"] = None
        kwargs["slices_per_volume"] = 1
    else:
        kwargs["dispersion"] = float(cond.dispersion)
    cfg = _budget_config(BudgetConfig, kwargs)
    plan = plan_budget(list(ordered), cfg, scores=scores)
    assignments = list(getattr(plan, "assignments", plan))
    spent = sum(len(a.indices) for a in assignments)
    if spent != total:
        raise SimulationError(
            f"condition {cond.name}: the training pool ({len(ordered)} scans) pays for {spent} of the "
            f"{total} slices of the budget; "
            + ("use more scans (a larger study set / fewer --test-scans) or fewer --full-volumes"
               if cond.budget is None else "a budget this large needs a higher dispersion")
        )
    return assignments


def _budget_config(cls: type, kwargs: dict[str, Any]) -> Any:
    known = set(getattr(cls, "__dataclass_fields__", {})) or None
    if known is not None:
        if "slices_per_volume" in kwargs and "slices_per_volume" not in known:
            raise SimulationError("this budget planner has no one-slice-per-scan option (slices_per_volume)")
        kwargs = {k: v for k, v in kwargs.items() if k in known}
    return cls(**kwargs)


def count_slices(assignments: Sequence[Any]) -> int:
    return int(sum(len(a.indices) for a in assignments))


def count_volumes(assignments: Sequence[Any]) -> int:
    return len({a.image for a in assignments})
