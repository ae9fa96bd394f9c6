from __future__ import annotations

from pathlib import Path

import typer


def export(
    data: Path = typer.Argument(..., help="dHCP tree or studies folder (labels used as they are, 255 = not annotated)"),
    out: Path = typer.Option(..., "--out", help="nnU-Net raw folder to write Dataset<ID>_<NAME> into"),
    plan: Path | None = typer.Option(None, "--plan", help="slice-assignment plan JSON applied to the full labels"),
    dataset_id: int = typer.Option(501, "--dataset-id"),
    name: str = typer.Option("NeonatalDrawem9", "--name"),
    t1w: bool = typer.Option(False, "--t1w/--no-t1w", help="also export T1w as channel 1"),
) -> None:
    """Export (partial) labels as an nnU-Net v2 dataset whose dataset.json declares an ignore label."""
    from apps.export import export_nnunet
    from apps.plans import partial_labels_from_plan
    from training.data.dataset import open_dataset

    ds = open_dataset(data)
    partial = partial_labels_from_plan(ds, plan) if plan is not None else None
    summary = export_nnunet(ds.subjects, out, dataset_id=dataset_id, name=name, partial_labels=partial, with_t1w=t1w)
    share = summary.annotated_voxels / max(summary.total_voxels, 1)
    typer.echo(
        f"wrote {summary.cases} cases to {summary.folder} "
        f"({share:.1%} of voxels annotated{', ignore label declared' if summary.partial else ''})"
    )
