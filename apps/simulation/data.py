"""Simulation data: the study set (a dHCP tree or a generated one), the train/test split and the oracle.

The full dHCP labels play the annotator ("oracle"): a condition's plan says which slices would be
annotated, and :class:`Oracle` paints them as Slicer submits them and converts the painting with the
server's own ``convert_submission`` (255 elsewhere). Test
scans are drawn once, before any condition, are never offered to a planner or a trainer, and must
have dense labels (checked on load).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strategies.annotate.submission import convert_submission, paint_like_slicer
from strategies.plan.assignment import SliceAssignment
from training.data import labels as L


class SimulationError(ValueError):
    """A simulation that cannot run as asked (too few scans for the budget, partial test label, ...)."""


SYNTH_MARKER = "neolabel-synthetic.json"


def prepare_synthetic(root: Path, n_subjects: int, shape: Sequence[int], spacing: float, seed: int) -> Path:
    """Generate (once) a synthetic dHCP-layout study set under ``root``; reuse it when the parameters match."""
    from training.data.synthetic.write import write_study_set

    params = {"subjects": int(n_subjects), "shape": [int(s) for s in shape], "spacing": float(spacing),
              "seed": int(seed)}
    marker = root / SYNTH_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return root
        except ValueError:
            pass
        raise SimulationError(
            f"{root} holds a synthetic study set generated with other parameters ({marker}); "
            "use another --out folder or delete that data folder"
        )
    if root.exists() and any(root.iterdir()):
        raise SimulationError(f"{root} exists and is not a synthetic study set made by neolabel simulate")
    write_study_set(root, int(n_subjects), tuple(int(s) for s in shape), float(spacing), int(seed))
    from training.data.nifti import atomic_write_text

    atomic_write_text(marker, json.dumps(params))
    return root


@dataclass
class Split:
    test: list  # training.data.dataset.Subject, dense labels, never trained on
    pool: list  # training.data.dataset.Subject, labels used only through the oracle

    @property
    def test_ids(self) -> list[str]:
        return [s.id for s in self.test]

    @property
    def pool_ids(self) -> list[str]:
        return [s.id for s in self.pool]


def split_subjects(subjects: Sequence[Any], n_test: int, split_seed: int = 0) -> Split:
    """Held-out test scans and the training pool: a seeded permutation of the labelled scans sorted by id.

    The test set is the same for every condition and seed, so conditions are compared on the
    same scans.
    """
    labelled = sorted((s for s in subjects if s.label is not None), key=lambda s: s.id)
    if n_test < 1:
        raise SimulationError("the held-out test set needs at least one scan (--test-scans ≥ 1)")
    if len(labelled) <= n_test:
        raise SimulationError(
            f"{len(labelled)} labelled scan(s) found; need more than the {n_test} held-out test scans"
        )
    order = np.random.default_rng(split_seed).permutation(len(labelled))
    test = [labelled[i] for i in sorted(order[:n_test])]
    pool = [labelled[i] for i in sorted(order[n_test:])]
    return Split(test=test, pool=pool)


class Oracle:
    """Dense labels of the training pool, handed out only as partial labels of assigned slices."""

    def __init__(self, subjects: Iterable[Any], *, cache_size: int = 64) -> None:
        self._subjects = {s.id: s for s in subjects}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # id -> (label, image affine)
        self._cache_size = cache_size

    def full_label(self, subject_id: str) -> np.ndarray:
        return self._label_and_affine(subject_id)[0]

    def _label_and_affine(self, subject_id: str) -> tuple[np.ndarray, np.ndarray]:
        if subject_id not in self._subjects:
            raise SimulationError(f"{subject_id} is not in the training pool (test scans are never labelled)")
        if subject_id not in self._cache:
            from apps.plans import oracle_label

            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[subject_id] = oracle_label(self._subjects[subject_id], dense=True)
        return self._cache[subject_id]

    def submit(self, subject_id: str, assignments: Sequence[SliceAssignment],
               previous: np.ndarray | None = None) -> np.ndarray:
        """The stored partial label after the oracle annotates the assigned slices the way an annotator
        does in Slicer: a full labelmap painted on those slices, taken in by the server's own conversion."""
        label, affine = self._label_and_affine(subject_id)
        items = list(assignments)
        for a in items:
            a.check_image(label.shape, affine)
        return convert_submission(paint_like_slicer(label, items), items, previous).partial

    def dense_label_path(self, subject_id: str) -> Path:
        return Path(self._subjects[subject_id].label)


def check_dense(subjects: Iterable[Any]) -> None:
    """Every test label must be a full label (no 255): a partial test label would score unannotated voxels."""
    from training.data.nifti import load_volume

    for s in subjects:
        data = load_volume(s.label).data
        L.validate_label(data, allow_ignore=False, what=f"test label of {s.id} (test labels must be dense)")
