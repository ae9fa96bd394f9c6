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
) -> None:
    """Generate synthetic neonatal T2w/T1w volumes with drawem9 labels, seeded and reproducible."""
    import time

    import numpy as np

    from training.data.labels import CLASSES, NUM_CLASSES
    from training.data.synthetic import SyntheticError, write_studies_folder, write_study_set

    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    ages: list[float] = []

    def progress(info, subj) -> None:
        counts[:] += np.bincount(subj.label.ravel(), minlength=NUM_CLASSES)
        ages.append(info.scan_age)
        hc = subj.head_circumference
        typer.echo(f"  {info.image_id}: scan age {info.scan_age:.1f} w, head circumference {hc} cm")

    start = time.perf_counter()
    try:
        if studies:
            write_studies_folder(out, subjects, shape=shape, spacing=spacing, seed=seed, progress=progress)
        else:
            write_study_set(out, subjects, shape=shape, spacing=spacing, seed=seed, progress=progress)
    except SyntheticError as exc:
        raise typer.BadParameter(str(exc)) from exc
    elapsed = time.perf_counter() - start
    layout = "MONAI Label studies folder" if studies else "dHCP release-3 tree"
    typer.echo(
        f"wrote {subjects} subjects ({layout}) to {out} in {elapsed:.1f} s: shape {tuple(shape)}, "
        f"spacing {spacing:g} mm, scan age {min(ages):.1f}–{max(ages):.1f} weeks"
    )
    fractions = counts / max(int(counts.sum()), 1)
    parts = [f"{c.value} {c.key} {fractions[c.value]:.2%}" for c in CLASSES]
    typer.echo("voxel fractions: " + ", ".join(parts))
