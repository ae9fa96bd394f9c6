"""Incremental assignment: the next scan and slices for one annotator, from persisted state.

Pure functions over :class:`AssignmentState` (a JSON-serialisable dataclass the server stores):
time is an argument (``now``), never read from the clock, and every function returns a new state
instead of changing its input. Rules:

* the budget (``config.total_slices``) is never exceeded: slices under open leases are reserved;
* an annotated slice is never handed out again;
* a scan under an open lease is never handed to another annotator; leases expire at
  ``expires_at`` and their slices return to the pool; a client that asks again while holding a
  lease gets the same assignment back;
* scans are visited in the planner's order (fewest visits first, then the age-stratified
  seeded order), so a fresh state hands out the same scans and slices as ``plan_budget``; once
  every scan has been visited, scans are returned to for more slices (``round`` = the image's
  number of earlier visits). With a scored selection (``uncertainty``, ``claspe``) and scores, the
  scan with the most uncertainty left comes first, whatever its visits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from strategies.plan.assignment import SliceAssignment
from strategies.plan.budget import (
    BudgetConfig,
    BudgetError,
    Scores,
    check_entries,
    ordered_entries,
    volume_assignments,
    volume_capacity,
)
from strategies.plan.extents import PlanEntry
from strategies.plan.selection import SCORED_SELECTIONS


class StateError(ValueError):
    """Assignment state or a request that does not fit it (unknown image, bad time, ...)."""


def to_utc(now: datetime | str) -> datetime:
    """Aware UTC datetime from a datetime or ISO string (naive = UTC)."""
    if isinstance(now, str):
        try:
            now = datetime.fromisoformat(now)
        except ValueError:
            raise StateError(f"not an ISO 8601 time: {now!r}") from None
    if not isinstance(now, datetime):
        raise StateError(f"time must be a datetime or ISO string, got {type(now).__name__}")
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def _iso(t: datetime) -> str:
    return to_utc(t).isoformat()


@dataclass
class Lease:
    """One scan handed to one annotator until ``expires_at``."""

    image: str
    client_id: str
    assignments: list[SliceAssignment]
    issued_at: str
    expires_at: str

    @property
    def n_slices(self) -> int:
        return sum(a.n_slices for a in self.assignments)

    def expired(self, now: datetime | str) -> bool:
        return to_utc(now) >= to_utc(self.expires_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "client_id": self.client_id,
            "assignments": [a.to_json() for a in self.assignments],
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Lease:
        return cls(
            image=str(d["image"]),
            client_id=str(d["client_id"]),
            assignments=[SliceAssignment.from_json(a) for a in d["assignments"]],
            issued_at=str(d["issued_at"]),
            expires_at=str(d["expires_at"]),
        )


@dataclass
class AssignmentState:
    """Everything the assignment process remembers; ``to_json``/``from_json`` round-trip exactly.

    ``annotated[image][axis]`` = sorted voxel indices already annotated; ``visits[image]`` =
    completed assignments of that image; ``leases`` = open leases.
    """

    config: BudgetConfig
    annotated: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    visits: dict[str, int] = field(default_factory=dict)
    leases: list[Lease] = field(default_factory=list)

    @property
    def spent(self) -> int:
        """Slices annotated so far."""
        return sum(len(v) for axes in self.annotated.values() for v in axes.values())

    @property
    def reserved(self) -> int:
        """Slices under open leases (not yet annotated, not available to others)."""
        return sum(lease.n_slices for lease in self.leases)

    @property
    def remaining(self) -> int:
        return max(0, int(self.config.total_slices) - self.spent - self.reserved)

    def lease_of(self, *, image: str | None = None, client_id: str | None = None) -> Lease | None:
        for lease in self.leases:
            if (image is None or lease.image == image) and (client_id is None or lease.client_id == client_id):
                return lease
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "annotated": {i: {ax: list(v) for ax, v in axes.items()} for i, axes in sorted(self.annotated.items())},
            "visits": dict(sorted(self.visits.items())),
            "leases": [lease.to_json() for lease in self.leases],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AssignmentState:
        try:
            return cls(
                config=BudgetConfig.from_json(d["config"]),
                annotated={
                    str(i): {str(ax): sorted(int(x) for x in v) for ax, v in axes.items()}
                    for i, axes in d.get("annotated", {}).items()
                },
                visits={str(k): int(v) for k, v in d.get("visits", {}).items()},
                leases=[Lease.from_json(x) for x in d.get("leases", [])],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"malformed assignment state ({exc})") from None


@dataclass
class NextAssignment:
    """Answer of :func:`next_assignment`: the slices to annotate (empty if none) and the new state."""

    assignments: list[SliceAssignment]
    state: AssignmentState
    reason: str | None = None

    @property
    def image(self) -> str | None:
        return self.assignments[0].image if self.assignments else None


def new_state(config: BudgetConfig) -> AssignmentState:
    if not isinstance(config, BudgetConfig):
        raise StateError(f"config must be a BudgetConfig, got {type(config).__name__}")
    return AssignmentState(config=config)


def _copy(state: AssignmentState) -> AssignmentState:
    return AssignmentState.from_json(state.to_json())


def expire_leases(state: AssignmentState, now: datetime | str) -> AssignmentState:
    """A new state without the leases that expired at ``now``."""
    st = _copy(state)
    st.leases = [lease for lease in st.leases if not lease.expired(now)]
    return st


def _matches(lease: Lease, image: str, client_id: str | None) -> bool:
    return lease.image == image and (client_id is None or lease.client_id == client_id)


def release_lease(state: AssignmentState, image: str, client_id: str | None = None) -> AssignmentState:
    """A new state without the lease on ``image`` (e.g. the annotator skipped it)."""
    st = _copy(state)
    st.leases = [lease for lease in st.leases if not _matches(lease, image, client_id)]
    return st


def next_assignment(
    state: AssignmentState,
    entries: Sequence[PlanEntry],
    client_id: str,
    now: datetime | str,
    *,
    lease_seconds: float = 3600.0,
    scores: Scores | None = None,
) -> NextAssignment:
    """The next scan and slices for ``client_id`` at time ``now``, with a lease until ``now + lease_seconds``."""
    if not isinstance(client_id, str) or not client_id:
        raise StateError("client_id must be a non-empty string")
    if not lease_seconds > 0:
        raise StateError(f"lease_seconds must be > 0, got {lease_seconds}")
    try:
        check_entries(entries)
    except BudgetError as exc:
        raise StateError(str(exc)) from None
    t = to_utc(now)
    st = expire_leases(state, t)
    cfg = st.config
    held = st.lease_of(client_id=client_id)
    if held is not None:
        return NextAssignment([replace(a) for a in held.assignments], st, "client already holds an open lease")
    if st.remaining <= 0:
        why = f"budget of {cfg.total_slices} slices spent ({st.spent} annotated, {st.reserved} leased)"
        return NextAssignment([], st, why)
    leased = {lease.image for lease in st.leases}
    candidates = set()
    for e in entries:
        if e.id in leased:
            continue
        avail, _ = volume_capacity(e, cfg, st.annotated.get(e.id))
        if avail > 0:
            candidates.add(e.id)
    if not candidates:
        why = "all remaining scans are leased" if leased else "no scan has un-annotated usable slices left"
        return NextAssignment([], st, why)
    # the planner's order over every scan (not only the ones left), so a scan keeps its place
    scored = cfg.selection in SCORED_SELECTIONS
    order = ordered_entries(entries, cfg, scores if scored else None, st.annotated)
    order = [e for e in order if e.id in candidates]
    if not (scored and scores):
        rank = {e.id: r for r, e in enumerate(order)}
        order = sorted(order, key=lambda e: (st.visits.get(e.id, 0), rank[e.id]))
    entry = order[0]
    avail, basis = volume_capacity(entry, cfg, st.annotated.get(entry.id))
    k = min(cfg.quota(basis), avail, st.remaining)
    visit = st.visits.get(entry.id, 0)
    got = volume_assignments(
        entry,
        cfg,
        k,
        annotated=st.annotated.get(entry.id),
        visit=visit,
        scores=(scores or {}).get(entry.id),
        assigned_to=client_id,
        assigned_at=_iso(t),
    )
    st.leases.append(Lease(entry.id, client_id, got, _iso(t), _iso(t + timedelta(seconds=float(lease_seconds)))))
    return NextAssignment([replace(a) for a in got], st, None)


def record_submission(
    state: AssignmentState,
    assignments: SliceAssignment | Iterable[SliceAssignment],
    *,
    client_id: str | None = None,
) -> AssignmentState:
    """A new state after the annotator submitted ``assignments``: slices marked annotated, lease closed.

    Works without an open lease too (a late submission after expiry still counts). Slices
    already annotated are not counted twice. With ``client_id`` only that client's lease closes;
    another client's lease on the same image loses the slices just annotated (and closes when
    none are left), so nobody is asked to redo them and the budget is not reserved twice.
    ``client_id=None`` closes every lease on the image.
    """
    items = [assignments] if isinstance(assignments, SliceAssignment) else list(assignments)
    if not items:
        raise StateError("no assignments submitted")
    images = {a.image for a in items}
    if len(images) != 1:
        raise StateError(f"a submission covers one image, got {sorted(images)}")
    image = images.pop()
    st = _copy(state)
    per_axis = st.annotated.setdefault(image, {})
    for a in items:
        per_axis[a.axis] = sorted(set(per_axis.get(a.axis, [])) | set(a.indices))
    st.visits[image] = st.visits.get(image, 0) + 1
    st.leases = [lease for lease in st.leases if not _matches(lease, image, client_id)]
    if client_id is not None:
        trimmed = (without_annotated(lease, per_axis) if lease.image == image else lease for lease in st.leases)
        st.leases = [lease for lease in trimmed if lease is not None]
    return st


def without_annotated(lease: Lease, annotated: Mapping[str, Sequence[int]]) -> Lease | None:
    """``lease`` minus the slices in ``annotated`` (axis name → indices); None when nothing is left."""
    kept = []
    for a in lease.assignments:
        rest = [i for i in a.indices if i not in set(annotated.get(a.axis, ()))]
        if rest:
            kept.append(replace(a, indices=rest))
    if not kept:
        return None
    return replace(lease, assignments=kept)


def annotated_voxel_indices(state: AssignmentState, image: str) -> dict[str, np.ndarray]:
    return {ax: np.asarray(v, dtype=np.int64) for ax, v in state.annotated.get(image, {}).items()}
