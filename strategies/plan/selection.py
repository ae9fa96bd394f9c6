"""Shared building blocks of the budget planner and incremental assignment.

Everything random is drawn from a generator keyed by ``(seed, image id, purpose, visit)``, so
what one scan receives does not depend on which other scans are in the dataset or in which
order they are processed: the same config and seed give the same plan, and a scan keeps its
axis and slices when the dataset grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from strategies.plan.axes import AXES
from strategies.plan.extents import PlanEntry
from strategies.plan.uncertainty import CLASS_ENTROPY, CLASS_VOXELS, MODEL_ROUND, class_key, rank_slices
from training.data.labels import BRAIN

SELECTIONS: tuple[str, ...] = ("equidistant", "random", "fgrandom", "uncertainty", "claspe")
"""How slices are chosen within a scan (see :func:`choose_slices`)."""
SCORED_SELECTIONS: tuple[str, ...] = ("uncertainty", "claspe")
"""Selections that rank by a model's predictive entropy: they need per-slice scores, and scans are
then visited by the uncertainty they hold."""
CLASS_SELECTIONS: tuple[str, ...] = ("fgrandom", "claspe")
"""Selections that use per-class slice statistics (``class_voxels``/``class_entropy``) when given."""
AXIS_MODES: tuple[str, ...] = (*AXES, "random", "mixed")

FG_SHARE = 0.33
"""Foreground-aware random: share of picks seeded on a class's foreground (nnActive's baseline and
nnU-Net's foreground oversampling use a third); the rest are uniform over the brain slices."""
CLASPE_BETA_START = 1.0
"""ClaSP-PE-like power noising: β of the first model (sampling ∝ entropy, the most diverse)."""
CLASPE_BETA_STEP = 1.0
"""β grows by this much per model generation: the noise decays, later rounds exploit."""
CLASPE_BETA_MAX = 8.0
"""β stops growing here (≈ top-k with a little noise)."""
_TINY = 1e-12


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


@dataclass(frozen=True)
class ClassSlices:
    """Per-class statistics of one axis' slices, canonical order, shape ``(n_classes, n_slices)``.

    ``voxels``: voxels of each class per slice (predicted, or the oracle's label in simulation);
    ``entropy``: their predictive-entropy mass; ``model_round``: generation of the model that made
    them (sets claspe's β)."""

    voxels: np.ndarray | None = None
    entropy: np.ndarray | None = None
    model_round: int = 0


def class_slices_for(entry: PlanEntry, axis: str, scores: Mapping[str, np.ndarray] | None) -> ClassSlices | None:
    """The per-class statistics of ``axis`` in a scores dict (voxel order) → canonical order; None if absent."""
    if not scores:
        return None
    frame = entry.frames[axis]
    arrays: dict[str, np.ndarray | None] = {}
    for what in (CLASS_VOXELS, CLASS_ENTROPY):
        a = scores.get(class_key(axis, what))
        if a is not None:
            a = np.asarray(a, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != frame.size:
                raise ValueError(f"{entry.id}: {axis} {what} has shape {a.shape}, expected (classes, {frame.size})")
            a = a[:, ::-1].copy() if frame.flipped else a
        arrays[what] = a
    if arrays[CLASS_VOXELS] is None and arrays[CLASS_ENTROPY] is None:
        return None
    model_round = int(np.asarray(scores.get(MODEL_ROUND, 0)))
    return ClassSlices(arrays[CLASS_VOXELS], arrays[CLASS_ENTROPY], model_round)


def claspe_beta(model_round: int) -> float:
    """β of the power noise for scores made by model generation ``model_round`` (grows, so noise decays)."""
    return float(min(CLASPE_BETA_MAX, CLASPE_BETA_START + CLASPE_BETA_STEP * max(0, int(model_round))))


def _present_classes(voxels: np.ndarray | None, cand: np.ndarray, classes: Sequence[int]) -> list[int]:
    if voxels is None:
        return []
    return [int(c) for c in classes if c < voxels.shape[0] and np.any(voxels[c, cand] > 0)]


def fg_random_slices(
    cand: np.ndarray,
    k: int,
    rng: np.random.Generator,
    voxels: np.ndarray | None,
    *,
    share: float = FG_SHARE,
    classes: Sequence[int] = BRAIN,
) -> np.ndarray:
    """Foreground-aware random (nnActive's baseline, for slices): ``share`` of the ``k`` picks are
    seeded on a class (a class drawn uniformly among the brain classes present, then a slice
    uniformly among the candidates showing it), the rest uniform over ``cand`` (brain slices).

    A fractional foreground count is rounded at random, so one slice per scan is foreground-seeded
    with probability ``share``. Without ``voxels`` every pick is uniform."""
    n_fg = int(np.floor(share * k))
    n_fg += int(rng.random() < share * k - n_fg)
    free = np.ones(cand.size, dtype=bool)
    for _ in range(n_fg):
        present = _present_classes(voxels, cand[free], classes)
        if not present:
            break
        c = present[int(rng.integers(len(present)))]
        opts = np.flatnonzero(free & (voxels[c, cand] > 0))  # type: ignore[index]
        free[opts[int(rng.integers(opts.size))]] = False
    rest = k - int((~free).sum())
    if rest > 0:
        free[rng.choice(np.flatnonzero(free), size=rest, replace=False)] = False
    return np.sort(cand[~free]).astype(np.int64)


def _power_keys(values: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Gumbel-top-k keys: the order of ``β·log(v) + Gumbel`` samples without replacement ∝ ``v^β``."""
    return beta * np.log(np.maximum(values, _TINY)) + rng.gumbel(size=values.shape)


class _Picker:
    """Greedy picks by key among free candidates, keeping ``min_spacing`` between picks while ``spaced``."""

    def __init__(self, cand: np.ndarray, min_spacing: int) -> None:
        self.cand = cand
        self.free = np.ones(cand.size, dtype=bool)
        self.blocked = np.zeros(cand.size, dtype=bool)
        self.min_spacing = int(min_spacing)

    @property
    def n(self) -> int:
        return int((~self.free).sum())

    def pick(self, keys: np.ndarray, spaced: bool) -> bool:
        ok = np.isfinite(keys) & self.free & (~self.blocked if spaced else True)
        if not ok.any():
            return False
        j = int(np.argmax(np.where(ok, keys, -np.inf)))
        self.free[j] = False
        self.blocked |= np.abs(self.cand - self.cand[j]) < self.min_spacing
        return True

    def chosen(self) -> np.ndarray:
        return np.sort(self.cand[~self.free]).astype(np.int64)


def claspe_slices(
    cand: np.ndarray,
    k: int,
    rng: np.random.Generator,
    scores: np.ndarray | None,
    classes: ClassSlices | None,
    *,
    min_spacing: int = 1,
    brain_classes: Sequence[int] = BRAIN,
) -> np.ndarray:
    """ClaSP-PE-like choice (class-stratified, scheduled power-noised predictive entropy; after the
    description in Lüth et al. 2026, not their code), for the slices of one scan and axis.

    Classes take turns in a seeded random order (each brain class the model predicts in a candidate
    slice); on its turn a class takes the slice with the best power-noised key ``β·log(entropy mass
    of the class in the slice) + Gumbel`` among the slices showing it, so picks are drawn ∝ mass^β
    and every class gets a pick before any gets a second (the first pick of a class ignores
    ``min_spacing`` if it must; later ones keep it while they can). ``β = claspe_beta(model_round)``
    grows with the model's generation: diverse early, greedy late. When no class has a slice left,
    the rest go by power-noised mean slice entropy (``scores``)."""
    beta = claspe_beta(classes.model_round if classes is not None else 0)
    voxels = classes.voxels if classes is not None else None
    mass = classes.entropy if classes is not None else None
    shown_by = voxels if voxels is not None else mass
    present = _present_classes(shown_by, cand, brain_classes)
    slice_vals = np.asarray(scores, dtype=np.float64)[cand] if scores is not None else np.ones(cand.size)
    rows = []
    for i in rng.permutation(len(present)):
        c = present[int(i)]
        vals = mass[c, cand] if mass is not None else slice_vals
        rows.append(np.where(shown_by[c, cand] > 0, _power_keys(vals, beta, rng), -np.inf))  # type: ignore[index]
    fill = _power_keys(slice_vals, beta, rng)
    picker = _Picker(cand, min_spacing)
    for row in rows:  # coverage first: one pick per class, closer than min_spacing if it must be
        if picker.n < k and not picker.pick(row, True):
            picker.pick(row, False)
    for spaced in (True, False):
        active = list(range(len(rows)))
        while active and picker.n < k:  # further rounds of one pick per class
            active = [r for r in active if picker.n < k and picker.pick(rows[r], spaced)]
        while picker.n < k and picker.pick(fill, spaced):
            pass
    return picker.chosen()


def choose_slices(
    usable: np.ndarray,
    k: int,
    selection: str,
    rng: np.random.Generator,
    *,
    annotated: Iterable[int] = (),
    scores: np.ndarray | None = None,
    min_spacing: int = 1,
    classes: ClassSlices | None = None,
) -> np.ndarray:
    """Pick ``k`` canonical slice indices of one axis among ``usable``, never one in ``annotated``.

    ``equidistant``: evenly spaced over the usable range on a first visit; on later visits each
    new slice is the one farthest from every slice already annotated. ``random``: uniform without
    replacement. ``fgrandom``: foreground-aware random (:func:`fg_random_slices`; uniform without
    ``classes``). ``uncertainty``: highest ``scores`` (canonical order) with ``min_spacing``.
    ``claspe``: class-stratified power-noised entropy (:func:`claspe_slices`). Without scores the two
    scored selections fall back to equidistant (a cold start before any model exists).
    """
    ann = np.asarray(sorted({int(i) for i in annotated}), dtype=np.int64)
    cand = np.setdiff1d(np.asarray(usable, dtype=np.int64), ann)
    k = min(int(k), cand.size)
    if k <= 0:
        return np.asarray([], dtype=np.int64)
    if selection == "random":
        return np.sort(rng.choice(cand, size=k, replace=False)).astype(np.int64)
    if selection == "fgrandom":
        return fg_random_slices(cand, k, rng, classes.voxels if classes is not None else None)
    if selection == "uncertainty" and scores is not None:
        picked = rank_slices(scores, k, min_spacing=min_spacing, candidates=cand)
        return np.asarray(sorted(picked), dtype=np.int64)
    if selection == "claspe" and (scores is not None or (classes is not None and classes.entropy is not None)):
        return claspe_slices(cand, k, rng, scores, classes, min_spacing=min_spacing)
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
