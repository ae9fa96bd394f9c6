"""Uncertainty-based slice and scan ranking from predicted class probabilities.

Takes probability arrays ``(C, X, Y, Z)`` (softmax output in the image's own grid), never a
model: strategies know nothing of torch. The score of a slice is the mean voxel-wise predictive
entropy over the brain voxels of that slice (a mask argument), so a large, easy background does
not dilute it and slices without brain score nothing. Chosen slices keep a minimum spacing for
diversity (neighbouring slices are nearly redundant for annotation). Per class and slice it also
counts the predicted voxels and their entropy mass, so a class-stratified selection can give every
structure picks (a small one like the hippocampus is otherwise outvoted by the large tissues).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from strategies.plan.axes import AXES, axis_frames

CLASS_ENTROPY = "class_entropy"
"""Per-class entropy mass per slice (suffix of a scores key, see :func:`class_key`)."""
CLASS_VOXELS = "class_voxels"
"""Per-class voxel count per slice (suffix of a scores key, see :func:`class_key`)."""
MODEL_ROUND = "model_round"
"""Scores key: generation of the model whose probabilities gave the scores (0 = first model)."""


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


def class_key(axis: str, what: str) -> str:
    """Key of a per-class statistic of ``axis`` in a scores dict (``what``: CLASS_ENTROPY or CLASS_VOXELS)."""
    return f"{axis}_{what}"


def class_slice_sums(
    label: np.ndarray,
    voxel_axis: int,
    n_classes: int,
    *,
    weights: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """``(n_classes, n_slices)``: per class and slice along ``voxel_axis``, the voxel count of that class
    (``weights`` None) or the sum of ``weights`` over those voxels. Only ``mask`` voxels count; values
    outside ``0 … n_classes - 1`` (e.g. the ignore value) never count.

    One ``bincount`` per slice keeps memory at one slice's size on dHCP-sized volumes."""
    lab = np.asarray(label)
    if lab.ndim != 3:
        raise UncertaintyError(f"label must be 3D, got shape {lab.shape}")
    keep = (lab >= 0) & (lab < n_classes)
    if mask is not None:
        m = np.asarray(mask) != 0
        if m.shape != lab.shape:
            raise UncertaintyError(f"mask shape {m.shape} does not match the label {lab.shape}")
        keep &= m
    if weights is not None and np.shape(weights) != lab.shape:
        raise UncertaintyError(f"weights shape {np.shape(weights)} does not match the label {lab.shape}")
    n = lab.shape[voxel_axis]
    lab_s = np.moveaxis(lab, voxel_axis, 0).reshape(n, -1)
    keep_s = np.moveaxis(keep, voxel_axis, 0).reshape(n, -1)
    w_s = None if weights is None else np.moveaxis(np.asarray(weights, dtype=np.float64), voxel_axis, 0).reshape(n, -1)
    out = np.zeros((n_classes, n), dtype=np.float64)
    for i in range(n):
        k = keep_s[i]
        if k.any():
            w = None if w_s is None else w_s[i][k]
            out[:, i] = np.bincount(lab_s[i][k].astype(np.int64), weights=w, minlength=n_classes)[:n_classes]
    return out


def class_counts(label: np.ndarray, affine: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """``{"<axis>_class_voxels": (n_classes, n_slices)}`` from a label map (voxel order).

    What foreground-aware random needs to seed picks on a class: in the simulation the oracle's
    dense label (nnActive's definition uses the ground-truth foreground), in the server the model's
    predicted label (:func:`slice_scores` includes it)."""
    frames = axis_frames(affine, np.shape(label))
    return {
        class_key(name, CLASS_VOXELS): class_slice_sums(label, frames[name].voxel_axis, n_classes) for name in AXES
    }


def slice_scores(
    probs: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None, *, model_round: int | None = None
) -> dict[str, np.ndarray]:
    """Per-slice scores of one scan for all three anatomical axes, every array in voxel order.

    ``{axis: mean entropy per slice}`` is what ``selection="uncertainty"`` ranks. Per axis it also
    holds ``class_key(axis, CLASS_ENTROPY)`` (entropy mass of the voxels predicted as each class,
    per slice) and ``class_key(axis, CLASS_VOXELS)`` (their count), shape ``(C, n_slices)``, both over
    ``mask`` voxels: class-stratified selection (``claspe``) and foreground-aware random
    (``fgrandom``) use them. ``model_round`` (the generation of the model that made ``probs``: 0 for
    the first model) sets claspe's noise schedule and is stored under :data:`MODEL_ROUND`.
    This is the ``scores`` form :func:`strategies.plan.budget.plan_budget` and
    :func:`strategies.plan.incremental.next_assignment` take.
    """
    p = _check_probs(probs)
    e = voxel_entropy(p)
    label = np.argmax(p, axis=0)
    frames = axis_frames(affine, e.shape)
    out: dict[str, np.ndarray] = {}
    for name in AXES:
        va = frames[name].voxel_axis
        out[name] = slice_entropy(entropy=e, voxel_axis=va, mask=mask)
        out[class_key(name, CLASS_ENTROPY)] = class_slice_sums(label, va, p.shape[0], weights=e, mask=mask)
        out[class_key(name, CLASS_VOXELS)] = class_slice_sums(label, va, p.shape[0], mask=mask)
    if model_round is not None:
        out[MODEL_ROUND] = np.asarray(int(model_round))
    return out


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
