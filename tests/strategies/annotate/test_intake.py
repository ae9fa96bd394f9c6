"""Stored == painted: what an annotator paints on the assigned slices is what the server keeps, voxel for voxel."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from strategies.annotate.intake import SubmissionIntake
from strategies.annotate.original import original_label, original_label_names
from strategies.annotate.submission import SubmissionRejected
from strategies.plan.assignment import SliceAssignment
from training.data.labels import FRAME, IGNORE, NUM_CLASSES
from training.data.nifti import Volume

AXES = ("sagittal", "coronal", "axial")


class _Store:
    """An in-memory datastore: labels by (image, tag)."""

    def __init__(self) -> None:
        self.labels: dict[tuple[str, str], np.ndarray] = {}

    def read_label(self, image_id: str, tag: str) -> np.ndarray | None:
        return self.labels.get((image_id, tag))

    def store_label_array(self, image_id, data, affine, tag, info=None) -> str:
        self.labels[(image_id, tag)] = np.asarray(data, np.uint8).copy()
        return image_id

    def image_count(self) -> int:
        return 1


class _Ledger:
    """The assignment of the one image and a record of what was accepted."""

    def __init__(self, assignments: list[SliceAssignment]) -> None:
        self.assignments = assignments
        self.accepted: list[Any] = []

    def assignment_of(self, image_id, client_id=None):
        return self.assignments, client_id

    def last_granted_to(self, image_id):
        return None  # the datastore's original is the submitter's

    def submission_count(self, image_id):
        return len(self.accepted)

    def on_accepted(self, image_id, result, client_id, summary):
        self.accepted.append(result.accepted)
        return {"round": len(self.accepted)}

    def budget_status(self, n_images=None):
        return {}


def _case(rng: np.random.Generator, with_model: bool, tmp_path):
    shape = tuple(int(s) for s in rng.integers(8, 14, size=3))
    v = int(rng.integers(3))
    idx = sorted(int(i) for i in rng.choice(shape[v], size=min(4, shape[v]), replace=False))
    asg = [SliceAssignment("img", AXES[v], v, idx)]
    pred = rng.integers(0, NUM_CLASSES, size=shape).astype(np.uint8) if with_model else None
    original, kind = original_label(shape, asg, pred)
    # the annotator paints some assigned slices completely, over the original, and leaves the rest as it was
    upload = original.copy()
    painted_slices = [i for i in idx if rng.random() < 0.7] or idx[:1]
    for i in painted_slices:
        sl: list = [slice(None)] * 3
        sl[v] = i
        plane = rng.integers(0, NUM_CLASSES, size=upload[tuple(sl)].shape).astype(np.uint8)
        keep = rng.random(plane.shape) < 0.3  # some voxels left as the original showed them (frame or model)
        upload[tuple(sl)] = np.where(keep, upload[tuple(sl)], plane)
    free = [i for i in range(shape[v]) if i not in idx]
    stray: list = [int(rng.integers(0, s)) for s in shape]
    stray[v] = free[0]
    upload[tuple(stray)] = 3  # paint off the assigned slices: counted, ignored
    return shape, asg, original, kind, upload, painted_slices


def _slicer_export(upload: np.ndarray, kind: str) -> tuple[np.ndarray, list[dict]]:
    """Slicer numbers segments by position (1, 2, …) in the order the original's label names gave them."""
    names = original_label_names(kind)
    info = [{"name": name, "idx": pos} for pos, name in enumerate(names, start=1)]
    out = np.zeros_like(upload)
    for pos, value in enumerate(names.values(), start=1):
        out[upload == value] = pos
    return out, info


@pytest.mark.parametrize("with_model", [False, True])
@pytest.mark.parametrize("via_label_info", [True, False])
def test_stored_label_equals_the_painting_on_accepted_slices(tmp_path, with_model, via_label_info):
    rng = np.random.default_rng(1234 + 2 * with_model + via_label_info)
    for _ in range(25):
        shape, asg, original, kind, upload, painted_slices = _case(rng, with_model, tmp_path)
        store, ledger = _Store(), _Ledger(asg)
        store.labels[("img", "original")] = original
        data, info = _slicer_export(upload, kind) if via_label_info else (upload, None)
        raw = tmp_path / "raw.nii.gz"
        raw.write_bytes(b"raw upload")
        intake = SubmissionIntake(tmp_path / "studies", ledger, store)
        v = asg[0].voxel_axis
        # what was painted: the upload with the frame (no class) read as unpainted
        painting = np.where(upload == FRAME, 0, upload)
        other = tuple(a for a in range(3) if a != v)
        differs = (painting != (original if with_model else 0)).any(axis=other)
        expected_slices = [i for i in asg[0].indices if differs[i]]
        if not expected_slices:
            with pytest.raises(SubmissionRejected):
                intake.accept("img", str(raw), "final", Volume(data, np.eye(4)), shape, np.eye(4), info, "alice")
            continue
        intake.accept("img", str(raw), "final", Volume(data, np.eye(4)), shape, np.eye(4), info, "alice")
        stored = store.labels[("img", "final")]
        assert set(painted_slices) >= set(expected_slices)
        mask = np.zeros(shape, bool)
        take: list = [slice(None)] * 3
        take[v] = expected_slices
        mask[tuple(take)] = True
        np.testing.assert_array_equal(stored[mask], painting[mask])
        assert np.all(stored[~mask] == IGNORE)
        assert ledger.accepted[-1] == [{"axis": asg[0].axis, "voxel_axis": v, "indices": expected_slices}]
