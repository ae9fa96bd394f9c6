"""Label budgeting: spread a fixed number of 2D slices over scans (Richter & Fetit 2022, §3.4).

``dispersion`` is the fraction of a volume's *usable* slices (brain slices outside the margins,
along the volume's axis) that one volume receives: 1.0 = whole volumes (the paper's baseline),
0.33 = the paper's high dispersion. ``slices_per_volume`` (an int) instead fixes the count per
volume; ``slices_per_volume=1`` is the extreme of one slice per volume and overrides
``dispersion``. With ``axis="mixed"`` a volume's quota is ``dispersion`` × the mean usable count
of its three axes, split evenly over the three axes (same slice count per volume as a
single-axis plan, so conditions use comparable numbers of scans).

Scans are taken in a seeded, age-stratified order (:func:`strategies.plan.selection.scan_order`)
— or by uncertainty for the scored selections (``uncertainty``, ``claspe``) — and each receives its quota until the
budget is spent exactly; the last scan may receive fewer. If the scans run out first, the plan
carries a :class:`Shortfall` that says how many slices are missing and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from strategies.plan.assignment import SliceAssignment
from strategies.plan.axes import AXES
from strategies.plan.extents import PlanEntry, check_margin
from strategies.plan.selection import (
    AXIS_MODES,
    SCORED_SELECTIONS,
    SELECTIONS,
    choose_slices,
    class_slices_for,
    entry_rng,
    scan_order,
    scores_to_canonical,
    split_quota,
    volume_axes,
    volume_quota,
)
from strategies.plan.uncertainty import remaining_uncertainty

Scores = Mapping[str, Mapping[str, np.ndarray]]
"""``{image id: {axis name: per-slice score in voxel order}}`` (see ``uncertainty.slice_scores``)."""


class BudgetError(ValueError):
    """A budget configuration or a set of plan entries that cannot be planned."""


@dataclass(frozen=True)
class BudgetConfig:
    """How to spend a slice budget. Same config (incl. ``seed``) + same entries = same plan."""

    total_slices: int
    dispersion: float | None = 1.0
    axis: str = "axial"
    margin: float = 0.0
    selection: str = "equidistant"
    seed: int = 0
    slices_per_volume: int | None = None
    min_spacing: int = 3
    stratify_by_age: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.total_slices, bool) or not isinstance(self.total_slices, int | np.integer):
            raise BudgetError(f"total_slices must be an integer, got {self.total_slices!r}")
        if self.total_slices < 0:
            raise BudgetError(f"total_slices must be >= 0, got {self.total_slices}")
        if self.slices_per_volume is not None:
            if isinstance(self.slices_per_volume, bool) or not isinstance(self.slices_per_volume, int | np.integer):
                raise BudgetError(f"slices_per_volume must be an integer, got {self.slices_per_volume!r}")
            if self.slices_per_volume < 1:
                raise BudgetError(f"slices_per_volume must be >= 1, got {self.slices_per_volume}")
        else:
            d = self.dispersion
            if d is None or not isinstance(d, int | float | np.floating) or not (0 < float(d) <= 1):
                raise BudgetError(
                    f"dispersion must be in (0, 1] (fraction of a volume's usable slices), got {d!r}; "
                    "for one slice per volume use slices_per_volume=1"
                )
        if self.axis not in AXIS_MODES:
            raise BudgetError(f"unknown axis {self.axis!r}; expected one of {', '.join(AXIS_MODES)}")
        try:
            check_margin(self.margin)
        except ValueError as exc:
            raise BudgetError(str(exc)) from None
        if self.selection not in SELECTIONS:
            raise BudgetError(f"unknown selection {self.selection!r}; expected one of {', '.join(SELECTIONS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer) or self.seed < 0:
            raise BudgetError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.min_spacing, bool) or not isinstance(self.min_spacing, int) or self.min_spacing < 1:
            raise BudgetError(f"min_spacing must be an integer >= 1, got {self.min_spacing!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_slices"] = int(self.total_slices)
        d["dispersion"] = None if self.dispersion is None else float(self.dispersion)
        d["margin"] = float(self.margin)
        d["seed"] = int(self.seed)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BudgetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise BudgetError(f"unknown budget config keys {unknown}")
        if "total_slices" not in data:
            raise BudgetError("budget config lacks total_slices")
        return cls(**dict(data))

    def quota(self, n_usable: float) -> int:
        return volume_quota(n_usable, self.dispersion, self.slices_per_volume)


@dataclass
class Shortfall:
    """Slices of the budget the plan could not place, and why."""

    slices: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"slices": int(self.slices), "reason": self.reason}


@dataclass
class Plan:
    config: BudgetConfig
    assignments: list[SliceAssignment]
    shortfall: Shortfall | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def spent(self) -> int:
        return sum(a.n_slices for a in self.assignments)

    @property
    def images(self) -> list[str]:
        seen: dict[str, None] = {}
        for a in self.assignments:
            seen.setdefault(a.image, None)
        return list(seen)

    def for_image(self, image: str) -> list[SliceAssignment]:
        return [a for a in self.assignments if a.image == image]

    def summary(self) -> dict[str, Any]:
        """Scans used, slices per scan and per axis (what ``neolabel plan`` prints)."""
        per_scan: dict[str, int] = {}
        per_axis = {a: 0 for a in AXES}
        scans_per_axis = {a: set() for a in AXES}
        for a in self.assignments:
            per_scan[a.image] = per_scan.get(a.image, 0) + a.n_slices
            per_axis[a.axis] += a.n_slices
            scans_per_axis[a.axis].add(a.image)
        counts = list(per_scan.values())
        return {
            "budget": int(self.config.total_slices),
            "spent": self.spent,
            "scans": len(per_scan),
            "slices_per_scan": {
                "min": min(counts) if counts else 0,
                "median": float(np.median(counts)) if counts else 0.0,
                "max": max(counts) if counts else 0,
            },
            "slices_per_axis": per_axis,
            "scans_per_axis": {a: len(s) for a, s in scans_per_axis.items()},
            "shortfall": None if self.shortfall is None else self.shortfall.to_json(),
            "skipped": len(self.skipped),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "assignments": [a.to_json() for a in self.assignments],
            "shortfall": None if self.shortfall is None else self.shortfall.to_json(),
            "skipped": [{"image": i, "reason": r} for i, r in self.skipped],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        try:
            sf = data.get("shortfall")
            return cls(
                config=BudgetConfig.from_json(data["config"]),
                assignments=[SliceAssignment.from_json(a) for a in data["assignments"]],
                shortfall=None if sf is None else Shortfall(int(sf["slices"]), str(sf["reason"])),
                skipped=[(s["image"], s["reason"]) for s in data.get("skipped", [])],
            )
        except (KeyError, TypeError) as exc:
            raise BudgetError(f"malformed plan JSON ({exc})") from None


# --------------------------------------------------------------------------------------------


def volume_assignments(
    entry: PlanEntry,
    cfg: BudgetConfig,
    k: int,
    *,
    annotated: Mapping[str, Sequence[int]] | None = None,
    visit: int = 0,
    scores: Mapping[str, np.ndarray] | None = None,
    assigned_to: str | None = None,
    assigned_at: str | None = None,
) -> list[SliceAssignment]:
    """Up to ``k`` new slices for one volume (one assignment per axis used), none already annotated.

    ``annotated`` holds *voxel* indices per axis name. The choice depends only on the entry,
    the config, ``visit`` and ``scores``.
    """
    axes = volume_axes(entry, cfg.axis, cfg.seed)
    ann_can = {
        ax: entry.frames[ax].to_canonical(np.asarray((annotated or {}).get(ax, ()), dtype=np.int64)) for ax in axes
    }
    avail = {ax: np.setdiff1d(entry.usable_slices(ax, cfg.margin), ann_can[ax]) for ax in axes}
    if len(axes) == 1:
        split = [min(k, avail[axes[0]].size)]
    else:
        start = int(entry_rng(cfg.seed, entry.id, "split", visit).integers(len(axes)))
        split = split_quota(k, [avail[ax].size for ax in axes], start)
    out = []
    for ax, n in zip(axes, split, strict=True):
        if n <= 0:
            continue
        rng = entry_rng(cfg.seed, entry.id, f"slices:{ax}", visit)
        can = choose_slices(
            avail[ax],
            n,
            cfg.selection,
            rng,
            annotated=ann_can[ax],
            scores=scores_to_canonical(entry, ax, scores),
            min_spacing=cfg.min_spacing,
            classes=class_slices_for(entry, ax, scores),
        )
        frame = entry.frames[ax]
        out.append(
            SliceAssignment(
                image=entry.id,
                axis=ax,
                voxel_axis=frame.voxel_axis,
                indices=sorted(int(i) for i in frame.to_voxel(can)),
                strategy=cfg.selection,
                round=visit,
                assigned_to=assigned_to,
                assigned_at=assigned_at,
            )
        )
    return out


def volume_capacity(
    entry: PlanEntry, cfg: BudgetConfig, annotated: Mapping[str, Sequence[int]] | None = None
) -> tuple[int, float]:
    """``(slices still available, usable count that sets the quota)`` for one volume."""
    axes = volume_axes(entry, cfg.axis, cfg.seed)
    usable = {ax: entry.usable_slices(ax, cfg.margin) for ax in axes}
    ann = annotated or {}
    avail = 0
    for ax in axes:
        if not ann.get(ax):
            avail += int(usable[ax].size)
            continue
        done = entry.frames[ax].to_canonical(np.asarray(ann[ax], dtype=np.int64))
        avail += int(np.setdiff1d(usable[ax], done).size)
    basis = float(np.mean([usable[ax].size for ax in axes]))
    return avail, basis


def volume_uncertainty(
    entry: PlanEntry,
    cfg: BudgetConfig,
    scores: Mapping[str, np.ndarray] | None,
    k: int,
    annotated: Mapping[str, Sequence[int]] | None = None,
) -> float | None:
    """Uncertainty left in a volume: sum of its ``k`` best un-annotated usable slice scores."""
    if scores is None:
        return None
    vals = []
    for ax in volume_axes(entry, cfg.axis, cfg.seed):
        s = scores_to_canonical(entry, ax, scores)
        if s is None:
            return None
        done = entry.frames[ax].to_canonical(np.asarray((annotated or {}).get(ax, ()), dtype=np.int64))
        usable = entry.usable_slices(ax, cfg.margin)
        vals.append(remaining_uncertainty(s, done, candidates=usable, top=k))
    return float(sum(vals))


def check_entries(entries: Sequence[PlanEntry]) -> None:
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BudgetError(f"duplicate image ids in plan entries: {dup[:5]}")


def ordered_entries(
    entries: Sequence[PlanEntry],
    cfg: BudgetConfig,
    scores: Scores | None = None,
    annotated: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> list[PlanEntry]:
    """Entries in the order the budget visits them (age-stratified seeded, or by uncertainty)."""
    by_id = {e.id: e for e in entries}
    ages = [e.scan_age if cfg.stratify_by_age else None for e in entries]
    order = [by_id[i] for i in scan_order([e.id for e in entries], ages, cfg.seed)]
    if cfg.selection not in SCORED_SELECTIONS or not scores:
        return order
    rank = {e.id: r for r, e in enumerate(order)}

    def key(e: PlanEntry) -> tuple[int, float, int]:
        _, basis = volume_capacity(e, cfg)
        u = volume_uncertainty(e, cfg, scores.get(e.id), cfg.quota(basis), (annotated or {}).get(e.id))
        return (0, -u, rank[e.id]) if u is not None else (1, 0.0, rank[e.id])

    return sorted(order, key=key)


def plan_budget(entries: Sequence[PlanEntry], cfg: BudgetConfig, scores: Scores | None = None) -> Plan:
    """Spend ``cfg.total_slices`` over ``entries`` (metadata only; pure and seeded).

    ``scores`` (``{image: {axis: per-slice scores in voxel order}}``, as ``uncertainty.slice_scores``
    makes them) are needed for the scored selections (``uncertainty``, ``claspe``): scans are then
    taken by the uncertainty they hold (scans without scores last, in the stratified order, with
    equidistant slices). ``fgrandom`` uses the per-class voxel counts in them when given.
    """
    if not isinstance(cfg, BudgetConfig):
        raise BudgetError(f"cfg must be a BudgetConfig, got {type(cfg).__name__}")
    check_entries(entries)
    if cfg.selection in SCORED_SELECTIONS and not scores:
        raise BudgetError(
            f"selection {cfg.selection!r} needs per-slice scores (strategies.plan.uncertainty.slice_scores)"
        )
    skipped: list[tuple[str, str]] = []
    usable_entries = []
    capacities = {e.id: volume_capacity(e, cfg) for e in entries}
    for e in entries:
        avail, _ = capacities[e.id]
        if avail == 0:
            skipped.append((e.id, f"no brain slices along {cfg.axis} within the margins"))
        else:
            usable_entries.append(e)
    left = int(cfg.total_slices)
    assignments: list[SliceAssignment] = []
    capacity = 0
    for e in ordered_entries(usable_entries, cfg, scores):
        avail, basis = capacities[e.id]
        quota = min(cfg.quota(basis), avail)
        capacity += quota
        if left <= 0:
            continue
        k = min(quota, left)
        got = volume_assignments(e, cfg, k, scores=(scores or {}).get(e.id))
        left -= sum(a.n_slices for a in got)
        assignments.extend(got)
    shortfall = None
    if left > 0:
        per = (
            f"{cfg.slices_per_volume} slice(s) per volume"
            if cfg.slices_per_volume is not None
            else f"dispersion {cfg.dispersion:g}"
        )
        shortfall = Shortfall(
            left,
            f"only {len(usable_entries)} scans with usable {cfg.axis} slices (margin {cfg.margin:g}); at {per} "
            f"they hold {capacity} slices, {left} of the {cfg.total_slices} budgeted slices are not assigned",
        )
    return Plan(cfg, assignments, shortfall, skipped)
