"""``neolabel evaluate``: Dice per class, tissue mean and HD95 of a checkpoint on labelled scans."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    ckpt: Path = typer.Argument(..., help="Checkpoint written by `neolabel train`."),
    data: Path = typer.Argument(..., help="dHCP tree or folder of NIfTI images with dense labels."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
    out: Path | None = typer.Option(None, "--out", help="Also write the JSON report to this file."),
    subjects: str | None = typer.Option(
        None, "--subjects", help="Comma-separated subject ids (default: all labelled)."
    ),
    hd95: bool = typer.Option(
        True, "--hd95/--no-hd95", help="Compute HD95 (the slow part on large volumes)."
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda | cuda:N (default: cuda if available)."
    ),
    reference: bool = typer.Option(False, "--reference", help="Predict with the paper's slow settings."),
) -> None:
    """Score CKPT on DATA's labelled scans (Dice NaN: class absent in both; HD95 NaN: absent in either)."""
    import json

    from training.data.dataset import DatasetError, open_dataset
    from training.data.nifti import NiftiError, atomic_write_text
    from training.evaluate.segmentation import EvaluationError, evaluate_checkpoint
    from training.infer.predictor import PredictError
    from training.model.checkpoint import CheckpointError

    try:
        ds = open_dataset(data)
        chosen = ds.with_labels()
        if subjects:
            chosen = [ds.get(s.strip()) for s in subjects.split(",") if s.strip()]
        progress = None if as_json else (lambda msg: typer.echo(msg, err=True))
        report = evaluate_checkpoint(
            ckpt, chosen, device=device, hd95=hd95, progress=progress, fast=not reference
        )
        from training.evaluate.age import age_report_for

        age = age_report_for(ckpt, chosen, device=device)  # AgeU-Net checkpoints: scan-age MAE/MSE in weeks
    except (DatasetError, EvaluationError, CheckpointError, PredictError, NiftiError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    text = json.dumps({**report.to_dict(), **({"age": age.to_dict()} if age else {})}, indent=1)
    if out is not None:
        atomic_write_text(out, text + "\n")
    typer.echo(text if as_json else report.to_text() + (f"\nscan age\n{age.to_text()}" if age else ""))
