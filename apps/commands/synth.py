"""``neolabel synth``: write a synthetic dHCP-like study set (release-3 anatomical layout)."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Argument(..., help="Output folder (created if missing); files inside are overwritten."),
    subjects: int = typer.Option(8, "--subjects", help="Number of subjects (one session each)."),
    shape: tuple[int, int, int] = typer.Option(
        (54, 72, 72), "--shape", help="Volume shape X Y Z (X = left-right, the sagittal axis)."
    ),
    spacing: float = typer.Option(
        2.0, "--spacing", help="Isotropic voxel size in mm (dHCP: 217 290 290 at 0.5 mm; same field of view)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; subject k depends only on (seed, k)."),
    studies: bool = typer.Option(
        False,
        "--studies",
        help="Write a MONAI Label studies folder (OUT/<id>.nii.gz + OUT/labels/final/<id>.nii.gz) instead.",
    ),
    thick_axis: str | None = typer.Option(
        None,
        "--thick-axis",
        metavar="AXIS",
        help="Acquire the images as thick slices along sagittal, coronal or axial (labels stay isotropic); "
        "default: isotropic, as before.",
    ),
    thick_factor: float | None = typer.Option(
        None,
        "--thick-factor",
        metavar="F",
        help="Slice thickness in voxels for --thick-axis (default 2).",
    ),
) -> None:
    """Generate synthetic neonatal T2w/T1w volumes with drawem9 labels, seeded and reproducible."""
    import time

    import numpy as np

    from training.data.labels import CLASSES, NUM_CLASSES
    from training.data.synthetic.acquisition import check_acquisition
    from training.data.synthetic.params import SyntheticError
    from training.data.synthetic.write import write_studies_folder, write_study_set

    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    ages: list[float] = []

    def progress(info, subj) -> None:
        counts[:] += np.bincount(subj.label.ravel(), minlength=NUM_CLASSES)
        ages.append(info.scan_age)
        hc = subj.head_circumference
        typer.echo(f"  {info.image_id}: scan age {info.scan_age:.1f} w, head circumference {hc} cm")

    if thick_factor is not None and thick_axis is None:
        raise typer.BadParameter("--thick-factor needs --thick-axis")
    try:
        thick_axis, factor = check_acquisition(thick_axis, thick_factor)
    except SyntheticError as exc:
        raise typer.BadParameter(str(exc)) from exc
    acquisition = {"acquisition_axis": thick_axis, "slice_thickness_factor": factor}
    start = time.perf_counter()
    try:
        write = write_studies_folder if studies else write_study_set
        write(out, subjects, shape=shape, spacing=spacing, seed=seed, progress=progress, **acquisition)
    except SyntheticError as exc:
        raise typer.BadParameter(str(exc)) from exc
    elapsed = time.perf_counter() - start
    layout = "MONAI Label studies folder" if studies else "dHCP release-3 tree"
    typer.echo(
        f"wrote {subjects} subjects ({layout}) to {out} in {elapsed:.1f} s: shape {tuple(shape)}, "
        f"spacing {spacing:g} mm, scan age {min(ages):.1f}–{max(ages):.1f} weeks"
    )
    if thick_axis is not None:
        typer.echo(f"images acquired as {thick_axis} thick slices, {factor:g} voxels thick; labels isotropic")
    fractions = counts / max(int(counts.sum()), 1)
    parts = [f"{c.value} {c.key} {fractions[c.value]:.2%}" for c in CLASSES]
    typer.echo("voxel fractions: " + ", ".join(parts))
