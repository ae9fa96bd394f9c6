"""``neolabel train``: train the segmentation network on full labels or on a slice plan's partial labels.

Options default to None and then take ``training.fit.train.TrainConfig``'s defaults (one source; the
config is not imported here because it pulls in torch, and every command module is imported by
``neolabel --help``).

The plan → partial-label conversion is ``apps.plans`` (it needs ``strategies``, which ``training``
must never import); ``training.fit.train.train`` only ever sees partial labels.

``--nproc N`` re-runs this same command (without ``--nproc``) as N DDP processes through torchrun's
own launcher (``python -m torch.distributed.run --standalone --nproc-per-node N -m apps.cli train …``);
``torchrun … --no-python neolabel train …`` works directly too, also across nodes (docs/scale.md).
Every rank parses the arguments and builds the same partial labels; rank 0 reports.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from training.fit.freeze import FREEZE_LEVELS
from training.model.presets import PRESETS


def _forwarded_args(ctx: typer.Context, drop: set[str]) -> list[str]:
    """This command's arguments as the user gave them (defaults left out): to re-run it under torchrun."""
    positional: list[str] = []
    options: list[str] = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name) if p.name else None
        if p.name in drop or p.name is None or source is None or source.name == "DEFAULT":
            continue
        value = ctx.params[p.name]
        if p.param_type_name == "argument":
            positional.append(str(value))
        elif getattr(p, "is_flag", False):
            flag = p.opts[0] if value else (p.secondary_opts[:1] or [None])[0]
            options += [flag] if flag else []
        elif value is not None:
            options += [p.opts[0], str(value)]
    return positional + options


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(
    ctx: typer.Context,
    data: Path = typer.Argument(..., help="Dataset root (dHCP tree or a folder of NIfTI volumes + labels)."),
    out: Path = typer.Option(..., "--out", help="Output folder for checkpoints (best.pt, last.pt), logs, TensorBoard."),
    plan: Path | None = typer.Option(
        None, "--plan", help="Slice-assignment JSON: train on partial labels of the planned slices only."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs. Default: TrainConfig's."),
    preset: str | None = typer.Option(
        None, "--preset", help=f"Network preset: {' | '.join(PRESETS)}. Default: TrainConfig's."
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", help="Iterations per epoch (default: max(25, 4 × training subjects))."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Patches per iteration (per process). Default: TrainConfig's."
    ),
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
    modalities: str | None = typer.Option(
        None, "--modalities", help="Input channels, e.g. T2w or T2w,T1w. Default: TrainConfig's."
    ),
    init: Path | None = typer.Option(None, "--init", help="Start from this checkpoint's weights (fine-tuning)."),
    freeze: str | None = typer.Option(
        None, "--freeze", help=f"Transfer learning with --init: {' | '.join(FREEZE_LEVELS)} (see "
        f"training/fit/freeze.py: none = evaluate only, shallow/medium/deep freeze around the bottleneck). "
        "Default: TrainConfig's."
    ),
    age_head: bool = typer.Option(
        False, "--age-head/--no-age-head", help="AgeU-Net: also regress scan age from the bottleneck."
    ),
    age_weight: float | None = typer.Option(
        None, "--age-weight", help="α in loss = segmentation + α·MSE(age). Default: TrainConfig's."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT/last.pt (epoch, optimiser, scheduler)."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for sampling, augmentation and initialisation. Default: TrainConfig's."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    nproc: int = typer.Option(
        1, "--nproc", help="DDP processes on this machine, launched by torchrun (one per GPU; gloo on CPU). "
        "--batch-size is per process. Several nodes: run torchrun yourself (docs/scale.md)."
    ),
) -> None:
    """Train the DynUNet with the masked Dice+CE loss; writes OUT/best.pt and OUT/last.pt."""
    import logging

    from training.data.dataset import DatasetError, open_dataset
    from training.fit.train import TrainConfig, TrainError
    from training.fit.train import train as run_train

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 logs and reports
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    if nproc < 1:
        raise typer.BadParameter("--nproc must be ≥ 1", param_hint="--nproc")
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
    if nproc > 1 and not _under_torchrun():
        _launch(ctx, nproc, out, resume, device)
        return

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
    given = {
        "preset": preset, "epochs": epochs, "batch_size": batch_size, "seed": seed, "freeze": freeze,
        "age_weight": age_weight,
        "modalities": tuple(m.strip() for m in modalities.split(",") if m.strip()) if modalities else None,
    }
    cfg = TrainConfig(
        iterations_per_epoch=iterations, optimizer=optimizer, lr=lr, resume=resume, device=device, threads=threads,
        age_head=age_head, **{k: v for k, v in given.items() if v is not None},
    )
    try:
        res = run_train(cfg, train_subjects, out, partial_labels=partial, val_subjects=val_subjects or None,
                        init=init, progress=progress)
    except (TrainError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    if not main_rank:
        return
    best = f", best validation tissue Dice {res.best_metric:.4f}" if res.best_metric is not None else ""
    ranks = f" in {os.environ['WORLD_SIZE']} processes" if _under_torchrun() else ""
    typer.echo(f"trained {res.epochs_completed} epochs on {res.n_train} subjects{ranks}{best}; "
               f"checkpoints: {res.best_path}, {res.last_path}")


def _launch(ctx: typer.Context, nproc: int, out: Path, resume: bool, device: str | None) -> None:
    """Re-run this command as ``nproc`` ranks through torchrun and wait (rank 0 prints the report)."""
    import subprocess

    import torch

    from training.fit.distributed import run_torchrun

    if resume and not (out / "last.pt").is_file():
        raise typer.BadParameter(f"nothing to resume: {out / 'last.pt'} does not exist", param_hint="--resume")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device != "cpu" and gpus and nproc > gpus:  # NCCL needs a GPU of its own per process
        raise typer.BadParameter(f"{nproc} processes but {gpus} visible GPU(s): one process per GPU "
                                 "(or --device cpu)", param_hint="--nproc")
    try:
        run_torchrun(nproc, ["apps.cli", "train", *_forwarded_args(ctx, {"nproc"})])
    except subprocess.CalledProcessError as exc:
        typer.echo(f"error: a training process failed (exit {exc.returncode}); see the messages above", err=True)
        raise typer.Exit(1) from None
