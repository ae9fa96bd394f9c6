"""Export partial labels as an nnU-Net v2 raw dataset that declares an ``ignore`` label.

nnU-Net v2 wants consecutive label values with the ignore label the highest one, so our 255
("not annotated") becomes ``NUM_CLASSES`` (10) in the exported files and in ``dataset.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset import Subject
from training.data.labels import CLASSES, IGNORE, NUM_CLASSES, validate_label
from training.data.nifti import atomic_write_text, load_volume, read_header, save_volume

NNUNET_IGNORE = NUM_CLASSES


class ExportError(ValueError):
    """The export cannot be written as asked (bad folder name, label mismatch...)."""


@dataclass
class ExportSummary:
    folder: Path
    cases: int
    annotated_voxels: int
    total_voxels: int
    partial: bool


def export_nnunet(
    subjects: Sequence[Subject],
    out_root: Path,
    *,
    dataset_id: int = 501,
    name: str = "NeonatalDrawem9",
    partial_labels: Mapping[str, np.ndarray] | None = None,
    with_t1w: bool = False,
) -> ExportSummary:
    """Write ``Dataset<id>_<name>/{imagesTr,labelsTr,dataset.json}`` under ``out_root``.

    ``partial_labels`` (id → array) replaces the subjects' own label files, e.g. a plan applied
    to full labels; subjects without either are left out.
    """
    if not (1 <= dataset_id <= 999):
        raise ExportError(f"dataset id must be 1–999 (nnU-Net), got {dataset_id}")
    if not name.replace("_", "").isalnum():
        raise ExportError(f"dataset name {name!r} must be letters, digits and underscores")
    folder = Path(out_root) / f"Dataset{dataset_id:03d}_{name}"
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)

    cases = annotated = total = 0
    any_partial = False
    for subject in subjects:
        shape, affine = read_header(subject.image)
        if partial_labels is not None and subject.id in partial_labels:
            label = np.asarray(partial_labels[subject.id])
            label_affine = affine
        elif partial_labels is None and subject.label is not None:
            vol = load_volume(subject.label)
            label, label_affine = vol.data, vol.affine
        else:
            continue
        label = validate_label(
            label, image_shape=shape, label_affine=label_affine, image_affine=affine, what=f"{subject.id} label"
        )
        ignore = label == IGNORE
        any_partial |= bool(ignore.any())
        annotated += int((~ignore).sum())
        total += label.size
        save_volume(labels_dir / f"{subject.id}.nii.gz", np.where(ignore, NNUNET_IGNORE, label), affine, np.uint8)
        channels = [subject.image] + ([subject.modality("T1w")] if with_t1w else [])
        for c, path in enumerate(channels):
            target = images_dir / f"{subject.id}_{c:04d}.nii.gz"
            if path.name.endswith(".nii.gz"):
                shutil.copyfile(path, target)
            else:
                vol = load_volume(path)
                save_volume(target, vol.data, vol.affine)
        cases += 1
    if cases == 0:
        raise ExportError("nothing to export: no subject has a label (or an entry in the plan)")

    labels = {("background" if c.value == 0 else c.key): c.value for c in CLASSES}
    if any_partial:
        labels["ignore"] = NNUNET_IGNORE
    dataset_json = {
        "channel_names": {"0": "T2w", **({"1": "T1w"} if with_t1w else {})},
        "labels": labels,
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "dHCP drawem9 partial labels exported by neolabel (ignore = not annotated)",
    }
    atomic_write_text(folder / "dataset.json", json.dumps(dataset_json, indent=2))
    return ExportSummary(folder, cases, annotated, total, any_partial)
