"""Shared building blocks of the budget planner and incremental assignment.

Everything random is drawn from a generator keyed by ``(seed, image id, purpose, visit)``, so
what one scan receives does not depend on which other scans are in the dataset or in which
order they are processed: the same config and seed give the same plan, and a scan keeps its
axis and slices when the dataset grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from strategies.plan.axes import AXES
from strategies.plan.extents import PlanEntry
from strategies.plan.uncertainty import rank_slices

SELECTIONS: tuple[str, ...] = ("equidistant", "random", "uncertainty")
AXIS_MODES: tuple[str, ...] = (*AXES, "random", "mixed")


def entry_rng(seed: int, image_id: str, purpose: str, visit: int = 0) -> np.random.Generator:
    """A generator that depends only on the seed, the image id, a purpose string and the visit."""
    digest = hashlib.sha256(f"{image_id}\x00{purpose}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(visit), *words]))


def volume_axes(entry: PlanEntry, axis_mode: str, seed: int) -> list[str]:
    """Anatomical axes one volume is sliced along: the fixed axis, one drawn per volume, or all three."""
    if axis_mode in AXES:
        return [axis_mode]
    if axis_mode == "random":
        return [AXES[int(entry_rng(seed, entry.id, "axis").integers(3))]]
    if axis_mode == "mixed":
        return list(AXES)
    raise ValueError(f"unknown axis mode {axis_mode!r}")


def volume_quota(n_usable: float, dispersion: float | None, slices_per_volume: int | None) -> int:
    """Slices one volume receives per visit: ``round(dispersion × usable)`` (≥ 1) or the fixed count."""
    if n_usable <= 0:
        return 0
    if slices_per_volume is not None:
        k = int(slices_per_volume)
    else:
        k = max(1, int(np.floor(float(dispersion) * n_usable + 0.5)))  # type: ignore[arg-type]
    return k


def split_quota(k: int, capacities: Sequence[int], start: int = 0) -> list[int]:
    """Split ``k`` slices as evenly as possible over axes with the given capacities.

    The remainder goes to axes in order starting at ``start``; capacity that one axis lacks
    moves to the others. The result never exceeds a capacity and sums to ``min(k, sum(caps))``.
    """
    n = len(capacities)
    out = [0] * n
    left = min(int(k), int(sum(capacities)))
    order = [(start + i) % n for i in range(n)]
    while left > 0:
        open_axes = [a for a in order if out[a] < capacities[a]]
        share, extra = divmod(left, len(open_axes))
        for j, a in enumerate(open_axes):
            give = min(share + (1 if j < extra else 0), capacities[a] - out[a])
            out[a] += give
            left -= give
    return out


def equidistant(candidates: np.ndarray, k: int) -> np.ndarray:
    """``k`` of the sorted candidates at evenly spaced positions (centred: k = 1 gives the middle)."""
    n = candidates.size
    if k >= n:
        return candidates.copy()
    pos = np.floor((np.arange(k) + 0.5) * n / k).astype(int)
    return candidates[pos]


def farthest_points(candidates: np.ndarray, k: int, taken: np.ndarray) -> np.ndarray:
    """Greedy: each new slice is the candidate farthest from all slices already taken (ties: lowest)."""
    chosen: list[int] = []
    cand = candidates.astype(np.int64)
    if cand.size == 0 or k <= 0:
        return np.asarray([], dtype=np.int64)
    ref = np.asarray(taken, dtype=np.int64)
    dist = np.min(np.abs(cand[:, None] - ref[None, :]), axis=1) if ref.size else np.full(cand.size, np.inf)
    avail = np.ones(cand.size, dtype=bool)
    for _ in range(min(k, cand.size)):
        d = np.where(avail, dist, -1)
        i = int(np.argmax(d))
        chosen.append(int(cand[i]))
        avail[i] = False
        dist = np.minimum(dist, np.abs(cand - cand[i]))
    return np.asarray(sorted(chosen), dtype=np.int64)


def choose_slices(
    usable: np.ndarray,
    k: int,
    selection: str,
    rng: np.random.Generator,
    *,
    annotated: Iterable[int] = (),
    scores: np.ndarray | None = None,
    min_spacing: int = 1,
) -> np.ndarray:
    """Pick ``k`` canonical slice indices of one axis among ``usable``, never one in ``annotated``.

    ``equidistant``: evenly spaced over the usable range on a first visit; on later visits each
    new slice is the one farthest from every slice already annotated. ``random``: uniform without
    replacement. ``uncertainty``: highest ``scores`` (canonical order) with ``min_spacing``; without
    scores it falls back to equidistant (a cold start before any model exists).
    """
    ann = np.asarray(sorted({int(i) for i in annotated}), dtype=np.int64)
    cand = np.setdiff1d(np.asarray(usable, dtype=np.int64), ann)
    k = min(int(k), cand.size)
    if k <= 0:
        return np.asarray([], dtype=np.int64)
    if selection == "random":
        return np.sort(rng.choice(cand, size=k, replace=False)).astype(np.int64)
    if selection == "uncertainty" and scores is not None:
        picked = rank_slices(scores, k, min_spacing=min_spacing, candidates=cand)
        return np.asarray(sorted(picked), dtype=np.int64)
    if ann.size == 0:
        return equidistant(cand, k)
    return farthest_points(cand, k, ann)


def _scrambled_radical_inverse(n: int, rng: np.random.Generator) -> np.ndarray:
    """Owen-scrambled base-2 van der Corput points: every prefix of 2^m points has one per 2^-m cell."""
    bits = max(1, int(np.ceil(np.log2(max(n, 2)))))
    flips: dict[int, int] = {}
    out = np.empty(n, dtype=np.float64)
    for j in range(n):
        node, value = 1, 0
        for b in range(bits):
            digit = (j >> b) & 1
            f = flips.get(node)
            if f is None:
                f = flips[node] = int(rng.integers(2))
            digit ^= f
            node = 2 * node + digit
            value = 2 * value + digit
        out[j] = (value + rng.random()) / (1 << bits)
    return out


def scan_order(ids: Sequence[str], ages: Sequence[float | None], seed: int) -> list[str]:
    """Seeded order of scans in which every prefix spreads over the scan-age range.

    Scans are placed on [0, 1) by age rank (ties broken at random; scans of unknown age at a
    random position) and visited in the order of an Owen-scrambled van der Corput sequence: the
    first 2 picks fall in different age halves, the first 4 in different quarters, and so on. A
    small budget therefore does not land on term babies only, and a larger budget's scans
    include a smaller budget's (same seed): conditions compare on nested scan sets.
    Without any known age this is a seeded random permutation.
    """
    n = len(ids)
    if n == 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5CA7]))
    if len(ages) != n:
        raise ValueError("ids and ages differ in length")
    ids_sorted = sorted(ids)  # input order must not matter
    age_of = dict(zip(ids, ages, strict=True))
    known = [i for i in ids_sorted if age_of[i] is not None and np.isfinite(float(age_of[i]))]  # type: ignore[arg-type]
    if not known:
        return [ids_sorted[i] for i in rng.permutation(n)]
    tiebreak = rng.random(n)
    pos = np.empty(n)
    idx_of = {sid: j for j, sid in enumerate(ids_sorted)}
    kj = np.asarray([idx_of[s] for s in known])
    kages = np.asarray([float(age_of[s]) for s in known])  # type: ignore[arg-type]
    order = np.lexsort((tiebreak[kj], kages))
    ranks = np.empty(len(known))
    ranks[order] = np.arange(len(known))
    pos[kj] = (ranks + 0.5) / len(known)
    known_set = set(known)
    unknown = [idx_of[s] for s in ids_sorted if s not in known_set]
    if unknown:
        pos[unknown] = rng.random(len(unknown))
    targets = _scrambled_radical_inverse(n, rng)
    taken = np.zeros(n, dtype=bool)
    result = []
    for t in targets:
        d = np.abs(pos - t)
        d[taken] = np.inf
        i = int(np.argmin(d))
        taken[i] = True
        result.append(ids_sorted[i])
    return result


def scores_to_canonical(entry: PlanEntry, axis: str, scores: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """Per-slice scores given in voxel order for ``axis`` → canonical order (None if not given)."""
    if scores is None or axis not in scores:
        return None
    frame = entry.frames[axis]
    s = np.asarray(scores[axis], dtype=np.float64)
    if s.shape != (frame.size,):
        raise ValueError(
            f"{entry.id}: {axis} scores have shape {s.shape}, expected ({frame.size},) (one per voxel slice)"
        )
    return s[::-1].copy() if frame.flipped else s
