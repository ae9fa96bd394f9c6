"""Budget curves: one plan per budget × dispersion × axis × selection × seed, in percent of the pool.

A budget of ``p`` % spends ``round(p / 100 × U)`` slices, ``U`` = the pool's usable slices along the
count axis (brain slices minus the margin at each end, every pool scan): 100 % annotates every
usable slice of every pool scan, the full-annotation reference, and is the same plan (whole
volumes) for every dispersion, so every curve ends on it. Every model gets the same epochs,
iterations and batch, whatever its budget. A cell the pool cannot pay for (100 % of the slices at
a dispersion of 0.33 would need three pools) is not run and is listed with its reason, never
planned with a silently smaller budget. Plans that come out identical (at 100 % every selection
picks every slice) are trained once and shared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from apps.simulation.conditions import Condition
from apps.simulation.data import Oracle, SimulationError
from apps.simulation.plans import condition_assignments, pool_order
from apps.simulation.static import StaticJob
from strategies.plan.selection import CLASS_SELECTIONS

FULL_BUDGET = 100.0
"""The budget (percent) that annotates every usable slice of every pool scan: the full-annotation reference."""


def pool_capacity(entries: Sequence[Any], count_axis: str, margin: float) -> int:
    """Usable slices of the whole pool along ``count_axis`` (what a 100 % budget annotates)."""
    return int(sum(len(e.usable_slices(count_axis, margin)) for e in entries))


def budget_slices(percent: float, capacity: int) -> int:
    """Slices a ``percent`` budget spends out of ``capacity`` (at least one)."""
    return max(1, int(round(float(percent) / 100.0 * capacity)))


def oracle_class_counts(oracle: Oracle, entries: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per pool scan, the dense label's voxels per class and slice (``fgrandom`` seeds on them, as
    nnActive's foreground-aware random seeds on the ground-truth foreground)."""
    from strategies.plan.uncertainty import class_counts
    from training.data.labels import NUM_CLASSES

    return {e.id: class_counts(oracle.full_label(e.id), e.affine, NUM_CLASSES) for e in entries}


def plan_budget_jobs(
    conditions: Sequence[Condition],
    entries: Sequence[Any],
    seeds: Sequence[int],
    *,
    count_axis: str,
    scores: Mapping[str, Any] | None = None,
) -> tuple[list[StaticJob], dict[int, dict[str, int]], list[str]]:
    """Every feasible budget condition × seed planned before training.

    Returns the jobs, ``{seed: {budget %: slices}}`` and one line per cell not run (and why)."""
    jobs: list[StaticJob] = []
    totals: dict[int, dict[str, int]] = {}
    not_run: list[str] = []
    for seed in seeds:
        totals[seed] = {}
        for cond in conditions:
            if cond.budget is None:
                raise SimulationError(f"condition {cond.name} has no budget (budget-curve mode)")
            ordered = pool_order(entries, seed, count_axis, cond.margin)
            total = budget_slices(cond.budget, pool_capacity(entries, count_axis, cond.margin))
            totals[seed][f"{cond.budget:g}"] = total
            use = scores if cond.selection in CLASS_SELECTIONS else None
            # 100 % is every usable slice of every pool scan, whatever the dispersion: one plan, shared
            planned = replace(cond, dispersion=1.0) if cond.budget >= FULL_BUDGET else cond
            try:
                asg = condition_assignments(planned, ordered, total, seed, use)
            except SimulationError as exc:
                not_run.append(f"{cond.name} seed {seed}: not run ({exc})")
                continue
            jobs.append(StaticJob(cond, seed, total, asg, []))
    return jobs, totals, not_run


def _plan_signature(job: StaticJob) -> str:
    parts = sorted((a.image, a.axis, tuple(sorted(a.indices))) for a in job.assignments)
    return json.dumps([job.seed, parts, sorted(job.dense_ids)])


def dedupe_jobs(jobs: Sequence[StaticJob]) -> tuple[list[StaticJob], list[tuple[StaticJob, StaticJob]]]:
    """Jobs with distinct plans, and ``(job, the job whose model it shares)`` for the identical ones."""
    first: dict[str, StaticJob] = {}
    unique: list[StaticJob] = []
    shared: list[tuple[StaticJob, StaticJob]] = []
    for job in jobs:
        sig = _plan_signature(job)
        if sig in first:
            shared.append((job, first[sig]))
        else:
            first[sig] = job
            unique.append(job)
    return unique, shared


def shared_results(results: Sequence[dict], shared: Sequence[tuple[StaticJob, StaticJob]]) -> list[dict]:
    """Results of the jobs that share another job's model: the same scores under their own condition."""
    by_job = {(r["condition"]["name"], r["seed"]): r for r in results if r.get("mode") == "static"}
    out = []
    for job, rep in shared:
        r = by_job.get((rep.condition.name, rep.seed))
        if r is not None:
            out.append({**r, "condition": job.condition.to_json(), "shared_with": rep.condition.name})
    return out
