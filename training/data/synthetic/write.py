"""Compose and write synthetic subjects: draw → render (→ thick slices) → files.

Why: callers want whole study sets on disk laid out like the real data, so every reader (the
dHCP tree reader, the MONAI Label datastore, the simulation) runs unchanged on synthetic scans.
Two layouts: dHCP release 3 (``participants.tsv``, ``sub-*/sub-*_sessions.tsv``,
``sub-*/ses-*/anat/*.nii.gz``) and a MONAI Label studies folder (``<id>.nii.gz`` +
``labels/final/<id>.nii.gz``). Subject ``k`` depends only on ``(seed, k)``, so the same seed gives
byte-identical files whatever the number of subjects. A thick-slice study set also gets
:data:`ACQUISITION_NOTE`, saying how it was made (isotropic sets are written exactly as before).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from training.data.nifti import atomic_write_text, save_volume
from training.data.synthetic.acquisition import (
    DEFAULT_SLICE_THICKNESS_FACTOR,
    acquire_thick_slices,
    acquisition_note,
    check_acquisition,
)
from training.data.synthetic.params import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    SubjectInfo,
    SyntheticError,
    check_grid,
    draw_params,
    draw_study_params,
)
from training.data.synthetic.render import SyntheticSubject, affine_for, render_subject

IMAGE_SUFFIXES: tuple[str, ...] = ("T2w", "desc-restore_T2w", "T1w", "desc-restore_T1w")
LABEL_SUFFIX = "desc-drawem9_dseg"
MASK_SUFFIX = "desc-brain_mask"
ACQUISITION_NOTE = "synthetic_acquisition.json"
"""Written at the root of a thick-slice study set (never for the isotropic default)."""

Progress = Callable[[SubjectInfo, SyntheticSubject], None]


def generate_subject(
    scan_age: float,
    seed: int | np.random.Generator,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    acquisition_axis: str | None = None,
    slice_thickness_factor: float = DEFAULT_SLICE_THICKNESS_FACTOR,
) -> SyntheticSubject:
    """One synthetic neonatal session at ``scan_age`` weeks: ``render_subject(draw_params(...))``.

    With ``acquisition_axis`` (sagittal, coronal or axial) the images are acquired as slices
    ``slice_thickness_factor`` voxels thick along that axis; the label is the same as without.
    """
    axis, factor = check_acquisition(acquisition_axis, slice_thickness_factor)
    subj = render_subject(draw_params(seed, scan_age, shape, spacing))
    return subj if axis is None else acquire_thick_slices(subj, axis, factor)


def iter_subjects(
    subjects: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    acquisition_axis: str | None = None,
    slice_thickness_factor: float = DEFAULT_SLICE_THICKNESS_FACTOR,
) -> Iterator[tuple[SubjectInfo, SyntheticSubject]]:
    """Yield ``(SubjectInfo, SyntheticSubject)`` for subjects ``0..subjects-1``, one at a time."""
    n = _check_count(subjects)
    shp, sp = check_grid(shape, spacing)
    axis, factor = check_acquisition(acquisition_axis, slice_thickness_factor)
    for k in range(n):
        info, params = draw_study_params(k, seed, shp, sp)
        subj = render_subject(params)
        yield info, (subj if axis is None else acquire_thick_slices(subj, axis, factor))


# --------------------------------------------------------------------------------------------
# helpers


def _check_count(subjects) -> int:
    try:
        n = int(subjects)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"subjects must be a positive integer, got {subjects!r}") from exc
    if n < 1 or n != subjects:
        raise SyntheticError(f"subjects must be a positive integer, got {subjects!r}")
    if n > 10000:
        raise SyntheticError(f"subjects={n} is too many (at most 10000)")
    return n


def _check_out(out) -> Path:
    o = Path(out)
    if o.exists() and not o.is_dir():
        raise SyntheticError(f"{o} exists and is not a folder")
    return o


def _tsv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n")
    wr.writeheader()
    for r in rows:
        wr.writerow(r)
    return buf.getvalue()


def _write_acquisition_note(root: Path, n: int, shp, sp: float, seed: int, axis: str, factor: float) -> Path:
    note = {
        "generator": "training.data.synthetic",
        "seed": int(seed),
        "subjects": n,
        "shape": list(shp),
        "spacing_mm": sp,
        "acquisition": acquisition_note(axis, factor, affine_for(shp, sp)),
    }
    return atomic_write_text(root / ACQUISITION_NOTE, json.dumps(note, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# writers


def write_subject_files(anat: Path, image_id: str, subj: SyntheticSubject) -> list[Path]:
    """Write the six dHCP release-3 anatomical files of one session into ``anat``."""
    paths = []
    data = {
        "T2w": subj.t2w_raw,
        "desc-restore_T2w": subj.t2w,
        "T1w": subj.t1w_raw,
        "desc-restore_T1w": subj.t1w,
    }
    for suffix, arr in data.items():
        paths.append(save_volume(anat / f"{image_id}_{suffix}.nii.gz", arr, subj.affine, dtype=np.float32))
    for suffix, arr in ((MASK_SUFFIX, subj.brain_mask), (LABEL_SUFFIX, subj.label)):
        paths.append(save_volume(anat / f"{image_id}_{suffix}.nii.gz", arr, subj.affine, dtype=np.uint8))
    return paths


def _write_sessions_tsv(root: Path, info: SubjectInfo, subj: SyntheticSubject) -> None:
    sub = f"sub-{info.participant_id}"
    row = {
        "session_id": info.session_id,
        "scan_age": f"{info.scan_age:.2f}",
        "scan_head_circumference": f"{subj.head_circumference:.1f}",
    }
    atomic_write_text(
        root / sub / f"{sub}_sessions.tsv", _tsv([row], ["session_id", "scan_age", "scan_head_circumference"])
    )


def write_study_set(
    out: Path,
    subjects: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    progress: Progress | None = None,
    acquisition_axis: str | None = None,
    slice_thickness_factor: float = DEFAULT_SLICE_THICKNESS_FACTOR,
) -> list[Path]:
    """Write a dHCP release-3 anatomical tree under ``out``; return the session ``anat`` folders.

    Layout: ``participants.tsv``, ``sub-<id>/sub-<id>_sessions.tsv`` and
    ``sub-<id>/ses-<ses>/anat/sub-<id>_ses-<ses>_{T2w,desc-restore_T2w,T1w,desc-restore_T1w,
    desc-brain_mask,desc-drawem9_dseg}.nii.gz``. ``progress`` is called after each subject. With
    ``acquisition_axis`` the images are thick-slice acquisitions and :data:`ACQUISITION_NOTE` is
    written too.
    """
    n = _check_count(subjects)
    shp, sp = check_grid(shape, spacing)
    axis, factor = check_acquisition(acquisition_axis, slice_thickness_factor)
    root = _check_out(out)
    root.mkdir(parents=True, exist_ok=True)
    anat_dirs: list[Path] = []
    participants = []
    for info, subj in iter_subjects(n, shp, sp, seed, axis, factor):
        anat = root / f"sub-{info.participant_id}" / f"ses-{info.session_id}" / "anat"
        write_subject_files(anat, info.image_id, subj)
        _write_sessions_tsv(root, info, subj)
        participants.append(
            {"participant_id": info.participant_id, "sex": info.sex, "birth_age": f"{info.birth_age:.2f}"}
        )
        anat_dirs.append(anat)
        if progress is not None:
            progress(info, subj)
    atomic_write_text(root / "participants.tsv", _tsv(participants, ["participant_id", "sex", "birth_age"]))
    if axis is not None:
        _write_acquisition_note(root, n, shp, sp, seed, axis, factor)
    return anat_dirs


def write_studies_folder(
    out: Path,
    subjects: int,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: float = DEFAULT_SPACING,
    seed: int = 0,
    with_labels: bool = True,
    progress: Progress | None = None,
    acquisition_axis: str | None = None,
    slice_thickness_factor: float = DEFAULT_SLICE_THICKNESS_FACTOR,
) -> list[str]:
    """Write a MONAI Label studies folder: ``out/<id>.nii.gz`` (restored T2w) and, if
    ``with_labels``, ``out/labels/final/<id>.nii.gz`` (drawem9); ids like ``sub-SYN0001_ses-1001``.

    The subjects are the same as in :func:`write_study_set` with the same seed and acquisition.
    """
    n = _check_count(subjects)
    shp, sp = check_grid(shape, spacing)
    axis, factor = check_acquisition(acquisition_axis, slice_thickness_factor)
    root = _check_out(out)
    root.mkdir(parents=True, exist_ok=True)
    ids = []
    for info, subj in iter_subjects(n, shp, sp, seed, axis, factor):
        save_volume(root / f"{info.image_id}.nii.gz", subj.t2w, subj.affine, dtype=np.float32)
        if with_labels:
            final = root / "labels" / "final" / f"{info.image_id}.nii.gz"
            save_volume(final, subj.label, subj.affine, dtype=np.uint8)
        ids.append(info.image_id)
        if progress is not None:
            progress(info, subj)
    if axis is not None:
        _write_acquisition_note(root, n, shp, sp, seed, axis, factor)
    return ids
