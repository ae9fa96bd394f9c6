"""Turn what an annotator submits into the partial label that training uses.

Slicer submits a full labelmap with 0 wherever nothing was painted. The open assignment of the
image says which slices were asked for: an assigned slice with any painted (non-zero) voxel is
accepted (its 0 voxels then mean "outer background"), an assigned slice with no paint stays
un-annotated (255), and paint outside the assigned slices is counted and ignored. A label that
already holds 255 (bulk import of partial labels) is taken as is. The result is merged with the
image's earlier rounds (``strategies.annotate.masks.merge_partial``: newer wins where both annotated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.annotate.masks import assignment_mask, merge_partial, partial_label
from strategies.plan.assignment import SliceAssignment
from training.data.labels import CLASSES, FRAME, IGNORE, LabelError, is_frame_segment, validate_label

ANONYMOUS = "anonymous"  # client id of a submission that names none


class SubmissionRejected(ValueError):
    """A submission that is refused; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SubmissionResult:
    partial: np.ndarray
    mode: str  # "assignment" | "partial_import"
    accepted: list[dict[str, Any]] = field(default_factory=list)  # [{"axis", "voxel_axis", "indices"}]
    missing: list[dict[str, Any]] = field(default_factory=list)  # assigned slices left unpainted
    ignored_voxels: int = 0  # painted voxels outside the assignment
    annotated_voxels: int = 0  # annotated voxels in the merged label

    def summary(self) -> dict[str, Any]:
        n_acc = sum(len(a["indices"]) for a in self.accepted)
        n_mis = sum(len(a["indices"]) for a in self.missing)
        if self.mode == "partial_import":
            text = "partial label imported as is (255 = not annotated)"
        else:
            text = f"{n_acc} assigned slice(s) accepted"
            if n_mis:
                text += f", {n_mis} assigned slice(s) left unpainted (returned to the budget)"
            if self.ignored_voxels:
                text += f"; {self.ignored_voxels} painted voxel(s) outside the assigned slices ignored"
        return {
            "mode": self.mode,
            "slices_accepted": n_acc,
            "accepted": self.accepted,
            "slices_missing": n_mis,
            "missing": self.missing,
            "ignored_voxels_outside_assignment": int(self.ignored_voxels),
            "annotated_voxels": int(self.annotated_voxels),
            "message": text,
        }


def check_submission(
    data: np.ndarray, label_affine: np.ndarray, image_shape: tuple[int, ...], image_affine: np.ndarray
) -> np.ndarray:
    """Shape, affine and value checks against the image; uint8 label or :class:`SubmissionRejected`."""
    try:
        return validate_label(
            data, image_shape=image_shape, label_affine=label_affine, image_affine=image_affine, what="submitted label"
        )
    except LabelError as exc:
        raise SubmissionRejected(str(exc), 400) from None


def remap_segments(label: np.ndarray, label_info: Any, frame: np.ndarray | None = None) -> np.ndarray:
    """Map the values of a Slicer export back to drawem9 classes using the plugin's ``label_info``.

    Slicer numbers the exported segments by their position (``idx``), not by class; the plugin sends
    ``[{"name": segment name, "idx": value}, ...]`` with the upload. Names are matched against the class
    keys and names of ``training.data.labels``. A painted segment whose name is not a class is refused;
    the server's assignment frame (a segment of its own) is unpainted. Without ``label_info`` the values
    are classes, except the frame's value where ``frame`` (the ``original`` label's frame) lies.
    """
    if not label_info:
        lab = np.asarray(label)
        if frame is None:
            return lab
        left = frame & (lab == FRAME)
        return np.where(left, 0, lab).astype(lab.dtype) if left.any() else lab
    if not isinstance(label_info, list):
        raise SubmissionRejected("params.label_info must be a list of {name, idx}", 400)
    by_name = {c.key.lower(): c.value for c in CLASSES}
    by_name.update({c.name.lower(): c.value for c in CLASSES})
    lab = np.asarray(label)
    out = lab.copy()
    present = set(np.unique(lab).tolist())
    for item in label_info:
        if not isinstance(item, dict) or "idx" not in item or "name" not in item:
            raise SubmissionRejected("params.label_info entries must be {name, idx}", 400)
        try:
            idx = int(item["idx"])
        except (TypeError, ValueError):
            raise SubmissionRejected(f"params.label_info idx {item['idx']!r} is not an integer", 400) from None
        value = 0 if is_frame_segment(item["name"]) else by_name.get(str(item["name"]).strip().lower())
        if value is None:
            if idx in present and idx != 0:
                raise SubmissionRejected(
                    f"segment {item['name']!r} is not a drawem9 class; name segments as in /info labels", 400
                )
            continue
        out[lab == idx] = value
    return out


def paint_like_slicer(dense_label: np.ndarray, assignments: list[SliceAssignment]) -> np.ndarray:
    """What Slicer submits when an annotator paints the assigned slices exactly as ``dense_label``:
    a full labelmap, the classes on the assigned slices and 0 everywhere else (the simulation's oracle)."""
    lab = np.asarray(dense_label, dtype=np.uint8)
    mask = assignment_mask(lab.shape, assignments)
    out = np.zeros(lab.shape, dtype=np.uint8)
    out[mask] = lab[mask]
    return out


def convert_submission(
    label: np.ndarray,
    assignments: list[SliceAssignment] | None,
    previous: np.ndarray | None = None,
    original: np.ndarray | None = None,
) -> SubmissionResult:
    """Partial label for a checked submission; raises :class:`SubmissionRejected` when nothing is usable.

    ``original`` is the model's pre-segmentation the annotator may have started from: an assigned
    slice left exactly as pre-segmented is not an annotation (it goes back to the budget). (The frame
    of a model-less start is removed by :func:`remap_segments`; it is no class.)
    """
    lab = np.asarray(label, dtype=np.uint8)
    if original is not None and original.shape != lab.shape:
        original = None
    if np.any(lab == IGNORE):
        part = lab.copy()
        if not np.any(part != IGNORE):
            raise SubmissionRejected("empty submission: every voxel is 255 (not annotated)", 400)
        merged = part if previous is None else merge_partial(previous, part)
        return SubmissionResult(merged, "partial_import", annotated_voxels=int(np.sum(merged != IGNORE)))
    if not assignments:
        raise SubmissionRejected(
            "no open slice assignment for this image: ask for the next sample first (Next Sample in Slicer), "
            "or upload a partial label with 255 on voxels that were not annotated",
            409,
        )
    accepted: list[SliceAssignment] = []
    acc_json: list[dict[str, Any]] = []
    mis_json: list[dict[str, Any]] = []
    for a in assignments:
        other = tuple(ax for ax in range(3) if ax != a.voxel_axis)
        painted = set(np.flatnonzero((lab != 0).any(axis=other)).tolist())
        if original is not None:
            painted -= set(np.flatnonzero((lab == original).all(axis=other)).tolist())  # left as pre-segmented
        ok = [i for i in a.indices if i in painted]
        missing = [i for i in a.indices if i not in ok]
        if ok:
            accepted.append(
                SliceAssignment(a.image, a.axis, a.voxel_axis, ok, a.strategy, a.round, a.assigned_to, a.assigned_at)
            )
            acc_json.append({"axis": a.axis, "voxel_axis": a.voxel_axis, "indices": ok})
        if missing:
            mis_json.append({"axis": a.axis, "voxel_axis": a.voxel_axis, "indices": missing})
    if not accepted:
        asked = "; ".join(f"{a.axis} {a.indices}" for a in assignments)
        raise SubmissionRejected(
            f"empty submission: nothing was painted on the assigned slices ({asked}); nothing was stored", 400
        )
    in_assignment = assignment_mask(lab.shape, assignments)
    ignored = int(np.sum((lab != 0) & ~in_assignment))
    part = partial_label(lab, accepted)
    merged = part if previous is None else merge_partial(previous, part)
    return SubmissionResult(
        merged,
        "assignment",
        accepted=acc_json,
        missing=mis_json,
        ignored_voxels=ignored,
        annotated_voxels=int(np.sum(merged != IGNORE)),
    )
