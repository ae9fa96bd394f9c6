"""Composing a slice plan with a dataset: the plan's assignments applied to the full labels.

Lives in ``apps`` because it joins ``strategies`` (what is annotated) and ``training`` (the data);
``training`` itself never imports ``strategies``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from strategies.assignment import SliceAssignment
from strategies.masks import partial_label
from training.data import Dataset, DatasetError
from training.nifti import load_volume


def read_assignments(path: Path) -> list[SliceAssignment]:
    """Assignments from a plan file: ``{"assignments": [...]}`` or a bare list of them."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read plan JSON ({exc})") from exc
    items = data.get("assignments") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DatasetError(f"{path}: expected a list of assignments or {{'assignments': [...]}}")
    return [SliceAssignment.from_json(a) for a in items]


def partial_labels_from_plan(dataset: Dataset, plan: Path | list[SliceAssignment]) -> dict[str, np.ndarray]:
    """``{image id: partial label}`` for every image the plan names; full labels are the oracle."""
    assignments = read_assignments(plan) if isinstance(plan, Path | str) else list(plan)
    by_image: dict[str, list[SliceAssignment]] = defaultdict(list)
    for a in assignments:
        by_image[a.image].append(a)
    out: dict[str, np.ndarray] = {}
    for image_id, items in by_image.items():
        subject = dataset.get(image_id)
        if subject.label is None:
            raise DatasetError(f"{image_id}: the plan assigns slices but the scan has no full label to fill them")
        vol = load_volume(subject.label)
        out[image_id] = partial_label(vol.data, items, vol.affine)
    return out
