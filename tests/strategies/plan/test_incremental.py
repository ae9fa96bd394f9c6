"""Incremental assignment: leases, expiry, budget, no repeats, later rounds, serialisable state."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from strategies.plan.assignment import SliceAssignment
from strategies.plan.budget import BudgetConfig, plan_budget
from strategies.plan.extents import entry_from_arrays
from strategies.plan.incremental import (
    AssignmentState,
    StateError,
    new_state,
    next_assignment,
    record_submission,
    release_lease,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def _entries(n: int = 6):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        m = np.zeros((16, 20, 18), np.uint8)
        lo = rng.integers(1, 4, 3)
        m[lo[0] : 14, lo[1] : 18, lo[2] : 16] = 1
        out.append(entry_from_arrays(f"s{i}", np.diag([1.0, 1.0, 1.0, 1.0]), mask=m, scan_age=30.0 + 2 * i))
    return out


ENTRIES = _entries()


def _roundtrip(state: AssignmentState) -> AssignmentState:
    return AssignmentState.from_json(json.loads(json.dumps(state.to_json())))


def test_open_lease_blocks_second_annotator_and_expires() -> None:
    one = ENTRIES[:1]
    st = new_state(BudgetConfig(100, 0.3, "axial"))
    a = next_assignment(st, one, "alice", T0, lease_seconds=600)
    assert a.image == "s0" and a.assignments[0].assigned_to == "alice"
    assert a.assignments[0].assigned_at == T0.isoformat()
    b = next_assignment(a.state, one, "bob", T0 + timedelta(seconds=599), lease_seconds=600)
    assert b.assignments == [] and "leased" in b.reason
    again = next_assignment(a.state, one, "alice", T0 + timedelta(seconds=30))
    assert [x.to_json() for x in again.assignments] == [x.to_json() for x in a.assignments]
    late = next_assignment(_roundtrip(a.state), one, "bob", (T0 + timedelta(seconds=601)).isoformat())
    assert late.image == "s0" and late.assignments[0].assigned_to == "bob"
    assert late.assignments[0].indices == a.assignments[0].indices  # nothing was annotated meanwhile
    freed = release_lease(a.state, "s0")
    assert next_assignment(freed, one, "bob", T0).image == "s0"


def test_concurrent_annotators_get_different_scans() -> None:
    st = new_state(BudgetConfig(1000, 0.25, "random"))
    images = []
    for i in range(len(ENTRIES)):
        r = next_assignment(st, ENTRIES, f"ann{i}", T0)
        st = r.state
        images.append(r.image)
    assert len(set(images)) == len(ENTRIES)
    r = next_assignment(st, ENTRIES, "late", T0)
    assert r.assignments == [] and "leased" in r.reason


def test_pure_functions_do_not_change_their_input() -> None:
    st = new_state(BudgetConfig(30, 0.3, "mixed"))
    before = json.dumps(st.to_json())
    r = next_assignment(st, ENTRIES, "a", T0)
    assert json.dumps(st.to_json()) == before
    mid = json.dumps(r.state.to_json())
    record_submission(r.state, r.assignments)
    assert json.dumps(r.state.to_json()) == mid


@pytest.mark.parametrize("axis,selection", [("axial", "equidistant"), ("mixed", "random"), ("random", "equidistant")])
def test_budget_honoured_no_repeats_and_later_rounds(axis: str, selection: str) -> None:
    cfg = BudgetConfig(50, 0.25, axis, 0.1, selection, seed=2)
    st = new_state(cfg)
    seen: set[tuple[str, str, int]] = set()
    rounds = set()
    t = T0
    for step in range(200):
        r = next_assignment(st, ENTRIES, f"c{step % 3}", t)
        if not r.assignments:
            assert "spent" in r.reason
            break
        assert st.spent + r.state.reserved <= cfg.total_slices
        for a in r.assignments:
            rounds.add(a.round)
            for i in a.indices:
                key = (a.image, a.axis, i)
                assert key not in seen, f"slice {key} handed out twice"
                seen.add(key)
        st = _roundtrip(record_submission(r.state, r.assignments, client_id=f"c{step % 3}"))
        t += timedelta(minutes=1)
    assert st.spent == cfg.total_slices == len(seen)
    assert max(rounds) >= 1, "never returned to a scan"
    assert st.leases == []


def test_fresh_state_reproduces_the_static_plan() -> None:
    cfg = BudgetConfig(20, 0.33, "mixed", 0.1, "random", seed=9)
    plan = plan_budget(ENTRIES, cfg)
    assert plan.shortfall is None and len(plan.images) > 3
    st = new_state(cfg)
    got = []
    while True:
        r = next_assignment(st, ENTRIES, "solo", T0)
        if not r.assignments:
            break
        got.extend(r.assignments)
        st = record_submission(r.state, r.assignments)
    key = [(a.image, a.axis, a.indices) for a in plan.assignments]
    assert [(a.image, a.axis, a.indices) for a in got] == key


def test_exhausted_scans_and_bad_input() -> None:
    cfg = BudgetConfig(10_000, 1.0, "axial")
    st = new_state(cfg)
    for _ in range(len(ENTRIES[:2]) * 2 + 1):
        r = next_assignment(st, ENTRIES[:2], "a", T0)
        if not r.assignments:
            break
        st = record_submission(r.state, r.assignments)
    assert r.assignments == [] and "no scan" in r.reason
    with pytest.raises(StateError):
        next_assignment(st, ENTRIES, "", T0)
    with pytest.raises(StateError):
        next_assignment(st, ENTRIES, "a", "not a time")
    with pytest.raises(StateError):
        AssignmentState.from_json({"annotated": {}})


def test_late_submission_trims_the_new_holders_lease() -> None:
    """Alice's lease expired, Bob got the same slices; Alice then submits: Bob keeps none of the done slices,
    the budget is not reserved twice, and a lease on another scan is untouched."""
    st = new_state(BudgetConfig(200, 0.3, "axial"))
    a = next_assignment(st, ENTRIES[:1], "alice", T0, lease_seconds=60)
    other = next_assignment(a.state, ENTRIES[1:2], "carol", T0, lease_seconds=6000)
    b = next_assignment(other.state, ENTRIES[:1], "bob", T0 + timedelta(seconds=61), lease_seconds=600)
    assert b.assignments[0].indices == a.assignments[0].indices
    half = a.assignments[0].indices[: len(a.assignments[0].indices) // 2]
    done = [SliceAssignment("s0", "axial", 2, half)]
    after = record_submission(b.state, done, client_id="alice")
    bob = after.lease_of(image="s0", client_id="bob")
    assert bob is not None and set(bob.assignments[0].indices) == set(a.assignments[0].indices) - set(half)
    assert after.lease_of(image="s1", client_id="carol") is not None
    everything = [SliceAssignment("s0", "axial", 2, a.assignments[0].indices)]
    assert record_submission(b.state, everything, client_id="alice").lease_of(image="s0") is None
