"""Uncertainty-based slice and scan ranking from predicted class probabilities.

Takes probability arrays ``(C, X, Y, Z)`` (softmax output in the image's own grid), never a
model: strategies know nothing of torch. The score of a slice is the mean voxel-wise predictive
entropy over the brain voxels of that slice (a mask argument), so a large, easy background does
not dilute it and slices without brain score nothing. Chosen slices keep a minimum spacing for
diversity (neighbouring slices are nearly redundant for annotation).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from strategies.plan.axes import AXES, axis_frames


class UncertaintyError(ValueError):
    """Probability maps or scores that cannot be ranked (bad shape, NaN, mask mismatch, ...)."""


def _check_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 4:
        raise UncertaintyError(f"probabilities must have shape (C, X, Y, Z), got {p.shape}")
    if p.shape[0] < 2:
        raise UncertaintyError(f"probabilities need at least 2 classes, got {p.shape[0]}")
    return p


def voxel_entropy(probs: np.ndarray, *, normalise: bool = True, chunk: int = 16) -> np.ndarray:
    """Predictive entropy per voxel, ``(X, Y, Z)`` float32; ``normalise`` divides by ``log(C)`` (0–1).

    Computed in chunks along X so a dHCP-sized probability map does not need a second full copy.
    """
    p = _check_probs(probs)
    c = p.shape[0]
    out = np.empty(p.shape[1:], dtype=np.float32)
    for x0 in range(0, p.shape[1], chunk):
        block = np.asarray(p[:, x0 : x0 + chunk], dtype=np.float32)
        if not np.all(np.isfinite(block)):
            raise UncertaintyError("probabilities contain NaN or infinite values")
        block = np.clip(block, 1e-12, 1.0)
        out[x0 : x0 + chunk] = -(block * np.log(block)).sum(axis=0)
    if normalise:
        out /= np.float32(np.log(c))
    return out


def slice_entropy(
    probs: np.ndarray | None = None,
    voxel_axis: int = 2,
    mask: np.ndarray | None = None,
    *,
    entropy: np.ndarray | None = None,
) -> np.ndarray:
    """Mean predictive entropy of each slice along ``voxel_axis``, over mask voxels only.

    Pass ``entropy`` (from :func:`voxel_entropy`) to score several axes without recomputing it.
    Slices with no mask voxel score 0. Returns float64 of length ``shape[voxel_axis]``.
    """
    if entropy is None:
        if probs is None:
            raise UncertaintyError("give probs or entropy")
        entropy = voxel_entropy(probs)
    e = np.asarray(entropy, dtype=np.float64)
    if e.ndim != 3:
        raise UncertaintyError(f"entropy must be 3D, got shape {e.shape}")
    if voxel_axis not in (0, 1, 2):
        raise UncertaintyError(f"voxel_axis must be 0, 1 or 2, got {voxel_axis}")
    m = np.ones(e.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if m.shape != e.shape:
        raise UncertaintyError(f"mask shape {m.shape} does not match the probability map {e.shape}")
    other = tuple(a for a in range(3) if a != voxel_axis)
    total = np.where(m, e, 0.0).sum(axis=other)
    count = m.sum(axis=other)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def slice_scores(probs: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{axis name: per-slice mean entropy in voxel order}`` for all three anatomical axes.

    This is the ``scores`` form that :func:`strategies.plan.budget.plan_budget` and
    :func:`strategies.plan.incremental.next_assignment` take for ``selection="uncertainty"``.
    """
    e = voxel_entropy(probs)
    frames = axis_frames(affine, e.shape)
    return {name: slice_entropy(entropy=e, voxel_axis=frames[name].voxel_axis, mask=mask) for name in AXES}


def rank_slices(
    scores: np.ndarray,
    k: int,
    *,
    min_spacing: int = 1,
    candidates: Iterable[int] | None = None,
    exclude: Iterable[int] = (),
) -> list[int]:
    """Indices of the ``k`` highest-scoring slices, at least ``min_spacing`` apart where possible.

    Greedy: take the best remaining candidate that is ``min_spacing`` or more from every slice
    already taken; if fewer than ``k`` fit, fill with the best remaining ones regardless of
    spacing (the budget is spent rather than left over). Ties go to the lower index.
    Returned in descending score order.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise UncertaintyError(f"scores must be 1D, got shape {s.shape}")
    if np.any(~np.isfinite(s)):
        raise UncertaintyError("scores contain NaN or infinite values")
    if k < 0:
        raise UncertaintyError(f"k must be >= 0, got {k}")
    if min_spacing < 1:
        raise UncertaintyError(f"min_spacing must be >= 1, got {min_spacing}")
    cand = np.arange(s.size) if candidates is None else np.asarray(sorted(set(int(i) for i in candidates)), dtype=int)
    if cand.size and (cand[0] < 0 or cand[-1] >= s.size):
        raise UncertaintyError(f"candidate slice index out of range 0–{s.size - 1}")
    ex = {int(i) for i in exclude}
    cand = np.asarray([c for c in cand if c not in ex], dtype=int)
    if cand.size == 0 or k == 0:
        return []
    order = cand[np.lexsort((cand, -s[cand]))]  # descending score, then ascending index
    chosen: list[int] = []
    if min_spacing > 1:
        blocked = np.zeros(s.size, dtype=bool)
        for c in order:
            if len(chosen) == k:
                break
            if not blocked[c]:
                chosen.append(int(c))
                blocked[max(0, c - min_spacing + 1) : c + min_spacing] = True
    taken = set(chosen)
    for c in order:
        if len(chosen) == k:
            break
        if int(c) not in taken:
            chosen.append(int(c))
            taken.add(int(c))
    return chosen




def remaining_uncertainty(
    scores: np.ndarray, annotated: Iterable[int] = (), candidates: Iterable[int] | None = None, top: int | None = None
) -> float:
    """Uncertainty a scan still holds: sum of the ``top`` best un-annotated slice scores (all if None)."""
    s = np.asarray(scores, dtype=np.float64)
    idx = np.arange(s.size) if candidates is None else np.asarray(sorted(set(int(i) for i in candidates)), dtype=int)
    ann = {int(i) for i in annotated}
    left = np.asarray([s[i] for i in idx if i not in ann], dtype=np.float64)
    if left.size == 0:
        return 0.0
    if top is not None:
        left = np.sort(left)[::-1][: max(0, int(top))]
    return float(left.sum())
