"""nnU-Net v2 export: 255 becomes the declared ignore label, nothing else changes."""

import json

import numpy as np
import pytest

from apps.export import NNUNET_IGNORE, ExportError, export_nnunet
from apps.plans import partial_labels_from_plan
from strategies.plan.assignment import SliceAssignment
from training.data.labels import IGNORE, NUM_CLASSES
from training.data.nifti import load_volume


def test_export_plan_as_partial_labels(synth_dataset, tmp_path):
    subject = synth_dataset.subjects[0]
    full = load_volume(subject.label).data
    plan = tmp_path / "plan.json"
    a = SliceAssignment(image=subject.id, axis="axial", voxel_axis=2, indices=[15, 20], strategy="test")
    plan.write_text(json.dumps({"assignments": [a.to_json()]}))
    partial = partial_labels_from_plan(synth_dataset, plan)
    assert set(partial) == {subject.id}

    summary = export_nnunet(synth_dataset.subjects, tmp_path / "raw", dataset_id=7, name="Test", partial_labels=partial)
    assert summary.cases == 1 and summary.partial
    meta = json.loads((summary.folder / "dataset.json").read_text())
    assert meta["labels"]["ignore"] == NNUNET_IGNORE == NUM_CLASSES
    assert max(meta["labels"].values()) == meta["labels"]["ignore"]
    assert meta["labels"]["background"] == 0 and meta["numTraining"] == 1
    exported = load_volume(summary.folder / "labelsTr" / f"{subject.id}.nii.gz").data
    np.testing.assert_array_equal(exported == NNUNET_IGNORE, partial[subject.id] == IGNORE)
    annotated = exported != NNUNET_IGNORE
    np.testing.assert_array_equal(exported[annotated], full[annotated])
    assert annotated[:, :, [15, 20]].all() and not annotated[:, :, 16].any()
    assert (summary.folder / "imagesTr" / f"{subject.id}_0000.nii.gz").is_file()


def test_export_full_labels_without_ignore(synth_dataset, tmp_path):
    summary = export_nnunet(synth_dataset.subjects[:2], tmp_path, with_t1w=True)
    meta = json.loads((summary.folder / "dataset.json").read_text())
    assert "ignore" not in meta["labels"] and meta["channel_names"] == {"0": "T2w", "1": "T1w"}
    assert len(list((summary.folder / "imagesTr").glob("*_0001.nii.gz"))) == 2


def test_export_rejects_mismatched_label(synth_dataset, tmp_path):
    subject = synth_dataset.subjects[0]
    with pytest.raises(ValueError, match="shape"):
        export_nnunet([subject], tmp_path, partial_labels={subject.id: np.zeros((3, 3, 3), np.uint8)})
    with pytest.raises(ExportError, match="dataset id"):
        export_nnunet([subject], tmp_path, dataset_id=1000)


def test_plan_refuses_a_label_stored_in_another_orientation(tmp_path):
    """A label whose affine differs from its image's would be sliced mirrored: refused, not trained on."""
    from apps.plans import PlanError
    from training.data.dataset import Subject
    from training.data.nifti import save_volume

    image, label = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    save_volume(image, np.ones((8, 8, 8), np.float32), np.eye(4))
    save_volume(label, np.ones((8, 8, 8), np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS
    subject = Subject(id="s1", image=image, label=label)
    a = SliceAssignment(image="s1", axis="axial", voxel_axis=2, indices=[3], strategy="test")
    with pytest.raises(PlanError, match="affine"):
        partial_labels_from_plan([subject], [a])
    with pytest.raises(PlanError, match="not in the dataset"):
        partial_labels_from_plan([subject], [SliceAssignment(image="nope", axis="axial", voxel_axis=2, indices=[3])])
