"""``neolabel train``: train the segmentation network on full labels or on a slice plan's partial labels.

The plan → partial-label conversion is ``apps.plans`` (it needs ``strategies``, which ``training``
must never import); ``training.fit.train.train`` only ever sees partial labels.
"""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    data: Path = typer.Argument(..., help="Dataset root (dHCP tree or a folder of NIfTI volumes + labels)."),
    out: Path = typer.Option(..., "--out", help="Output folder for checkpoints (best.pt, last.pt), logs, TensorBoard."),
    plan: Path | None = typer.Option(
        None, "--plan", help="Slice-assignment JSON: train on partial labels of the planned slices only."
    ),
    epochs: int = typer.Option(50, "--epochs", help="Number of epochs."),
    preset: str = typer.Option("cpu", "--preset", help="Network preset: tiny | cpu | paper."),
    iterations: int | None = typer.Option(
        None, "--iterations", help="Iterations per epoch (default: max(25, 4 × training subjects))."
    ),
    batch_size: int = typer.Option(2, "--batch-size", help="Patches per iteration."),
    optimizer: str | None = typer.Option(
        None, "--optimizer", help="sgd | adamw (default: sgd for paper, adamw for cpu/tiny)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Initial learning rate (default: 1e-2 sgd, 3e-3 adamw)."),
    val: str | None = typer.Option(
        None, "--val", help="Comma-separated subject ids used for validation (dense labels), never trained on."
    ),
    val_fraction: float = typer.Option(
        0.0, "--val-fraction", help="Hold out this fraction of labelled subjects for validation (if no --val)."
    ),
    modalities: str = typer.Option("T2w", "--modalities", help="Input channels, e.g. T2w or T2w,T1w."),
    init: Path | None = typer.Option(None, "--init", help="Start from this checkpoint's weights (fine-tuning)."),
    freeze: str = typer.Option(
        "full", "--freeze", help="Transfer learning with --init: none (evaluate only) | shallow (bottleneck + "
        "adjacent blocks) | medium (+1 each side) | deep (+2) | full | scratch (random init, no --init)."
    ),
    age_head: bool = typer.Option(
        False, "--age-head/--no-age-head", help="AgeU-Net: also regress scan age from the bottleneck."
    ),
    age_weight: float = typer.Option(0.01, "--age-weight", help="α in loss = segmentation + α·MSE(age)."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.pt (epoch, optimiser, scheduler)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, augmentation and initialisation."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the DynUNet with the masked Dice+CE loss; writes OUT/best.pt and OUT/last.pt."""
    import logging

    from training.data.dataset import DatasetError, open_dataset
    from training.fit.train import TrainConfig, TrainError
    from training.fit.train import train as run_train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        ds = open_dataset(data)
    except (DatasetError, OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    labelled = ds.with_labels()
    if val:
        val_ids = [v.strip() for v in val.split(",") if v.strip()]
        try:
            val_subjects = [ds.get(v) for v in val_ids]
        except (DatasetError, KeyError) as exc:
            raise typer.BadParameter(str(exc)) from exc
    elif val_fraction > 0:
        if not 0 < val_fraction < 1:
            raise typer.BadParameter("--val-fraction must be in (0, 1)")
        n_val = max(1, int(round(val_fraction * len(labelled))))
        val_subjects = labelled[-n_val:]
    else:
        val_subjects = []
    val_set = {s.id for s in val_subjects}
    train_subjects = [s for s in ds.subjects if s.id not in val_set]

    partial = None
    if plan is not None:
        from apps.plans import PlanError, partial_labels_from_plan, read_assignments

        try:
            assignments = read_assignments(plan)
            partial = partial_labels_from_plan(train_subjects, assignments)
        except PlanError as exc:
            raise typer.BadParameter(str(exc), param_hint="--plan") from exc
        n_slices = sum(len(a.indices) for a in assignments)
        typer.echo(f"plan {plan}: {n_slices} slices in {len(partial)} images → partial labels")
    if resume and not (out / "last.pt").is_file():
        raise typer.BadParameter(f"nothing to resume: {out / 'last.pt'} does not exist", param_hint="--resume")
    cfg = TrainConfig(
        preset=preset, epochs=epochs, iterations_per_epoch=iterations, batch_size=batch_size, optimizer=optimizer,
        lr=lr, modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()), resume=resume,
        device=device, threads=threads, seed=seed, freeze=freeze, age_head=age_head, age_weight=age_weight,
    )
    try:
        res = run_train(cfg, train_subjects, out, partial_labels=partial, val_subjects=val_subjects or None,
                        init=init, progress=progress)
    except (TrainError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    best = f", best validation tissue Dice {res.best_metric:.4f}" if res.best_metric is not None else ""
    typer.echo(f"trained {res.epochs_completed} epochs on {res.n_train} subjects{best}; "
               f"checkpoints: {res.best_path}, {res.last_path}")
