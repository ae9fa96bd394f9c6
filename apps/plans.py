"""Composing a slice plan with a dataset: the plan's assignments applied to the full labels.

Lives in ``apps`` because it joins ``strategies`` (what is annotated) and ``training`` (the data);
``training`` itself never imports ``strategies``. One place loads an oracle label, so every user
(``train --plan``, ``export --plan``, the simulation) gets the same checks against the image.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from strategies.annotate.masks import partial_label
from strategies.plan.assignment import SliceAssignment
from training.data.dataset import Dataset, Subject
from training.data.labels import validate_label
from training.data.nifti import load_volume, read_header


class PlanError(ValueError):
    """A plan that cannot be applied to the data (unreadable, unknown image, no or mismatched label)."""


def read_assignments(path: str | Path) -> list[SliceAssignment]:
    """Assignments from a plan file: ``{"assignments": [...]}`` or a bare list of them."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"{path}: cannot read plan JSON ({exc})") from exc
    items = data.get("assignments") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise PlanError(f"{path}: expected a list of assignments or {{'assignments': [...]}}")
    try:
        return [SliceAssignment.from_json(a) for a in items]
    except ValueError as exc:
        raise PlanError(f"{path}: {exc}") from exc


def oracle_label(subject: Subject, *, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The subject's label (uint8) and the image affine, checked against the image's shape and affine.

    A label stored in another orientation than its image would otherwise be sliced and trained on
    mirrored; ``dense=True`` also refuses 255 (a test or oracle label must be complete).
    """
    if subject.label is None:
        raise PlanError(f"{subject.id}: no full label to fill the assigned slices from")
    shape, affine = read_header(subject.image)
    vol = load_volume(subject.label)
    try:
        lab = validate_label(vol.data, image_shape=shape, label_affine=vol.affine, image_affine=affine,
                             allow_ignore=not dense, what=f"label of {subject.id}")
    except ValueError as exc:
        raise PlanError(str(exc)) from exc
    return lab, affine


def partial_labels_from_plan(
    subjects: Dataset | Iterable[Subject], plan: str | Path | Iterable[SliceAssignment]
) -> dict[str, np.ndarray]:
    """``{image id: partial label}`` for every image the plan names; full labels are the oracle."""
    assignments = read_assignments(plan) if isinstance(plan, str | Path) else list(plan)
    by_id = {s.id: s for s in subjects}
    by_image: dict[str, list[SliceAssignment]] = defaultdict(list)
    for a in assignments:
        by_image[a.image].append(a)
    unknown = sorted(set(by_image) - set(by_id))
    if unknown:
        raise PlanError(f"the plan names images that are not in the dataset: {', '.join(unknown[:5])}")
    out: dict[str, np.ndarray] = {}
    for image_id, items in by_image.items():
        label, affine = oracle_label(by_id[image_id])
        try:
            out[image_id] = partial_label(label, items, affine)
        except ValueError as exc:
            raise PlanError(f"{image_id}: {exc}") from exc
    return out
