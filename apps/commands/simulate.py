"""``neolabel simulate``: replay budget strategies with dense labels as the oracle (heavy imports inside)."""

from __future__ import annotations

from pathlib import Path

import typer


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def simulate(
    data: Path | None = typer.Argument(
        None, help="dHCP release-3 anatomical tree (sub-*/ses-*/anat). Omit to generate a synthetic study set."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (results, plans, figures, models). Re-run to resume."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Epochs per model (same for every condition). Default 6."),
    seeds: int = typer.Option(None, "--seeds", help="Seeds per condition (mean ± sd). Default 2."),
    rounds: int = typer.Option(
        0, "--rounds", help="Active-learning loop mode with this many rounds (0 = static conditions)."
    ),
    iterations: int = typer.Option(
        None, "--iterations", help="Iterations per epoch (same for every model). Default 50."
    ),
    dispersion: list[str] = typer.Option(
        None, "--dispersion", help="Dispersion level(s): fraction of a scan's slices (0.33, 33%) or '1slice'."
    ),
    axis: list[str] = typer.Option(
        None, "--axis", help="Axes: sagittal, coronal, axial, random, mixed (comma list). Default: all but mixed."
    ),
    selection: list[str] = typer.Option(None, "--selection", help="Slice selection: equidistant, random. Repeatable."),
    margin: list[float] = typer.Option(
        None, "--margin", help="Margin(s): fraction of the brain extent excluded per end."
    ),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Leave out the full-volume baseline."),
    full_volumes: int = typer.Option(2, "--full-volumes", help="Scans of the full-volume baseline (sets the budget)."),
    count_axis: str = typer.Option(
        "axial", "--count-axis", help="Axis along which a full volume's slices are counted."
    ),
    test_scans: int = typer.Option(4, "--test-scans", help="Held-out, densely labelled test scans."),
    preset: str = typer.Option("tiny", "--preset", help="Network preset: tiny, cpu, paper."),
    lr: float = typer.Option(None, "--lr", help="Learning rate. Default 0.01 (AdamW); 0 = training's default."),
    synth_subjects: int = typer.Option(
        None, "--synth-subjects", help="Synthetic scans to generate (no DATA). Default 16."
    ),
    synth_shape: str = typer.Option(
        None, "--synth-shape", help="Synthetic volume shape 'X,Y,Z' (no DATA). Default 36,48,48."
    ),
    synth_spacing: float = typer.Option(None, "--synth-spacing", help="Synthetic voxel size in mm. Default 3.0."),
    strategy: list[str] = typer.Option(
        None, "--strategy", help="Loop strategies: uncertainty, random, equidistant (comma list or repeated)."
    ),
    seed_slices: int = typer.Option(None, "--seed-slices", help="Loop: slices of the initial seed set."),
    round_slices: int = typer.Option(None, "--round-slices", help="Loop: slices annotated per round."),
    round_epochs: int = typer.Option(None, "--round-epochs", help="Loop: warm-start epochs per round."),
    loop_axis: str = typer.Option(
        "axial", "--loop-axis", help="Loop: slicing axis (sagittal/coronal/axial/random/mixed)."
    ),
    loop_dispersion: float = typer.Option(
        0.33, "--loop-dispersion", help="Loop: fraction of a scan's slices per visit."
    ),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: all cores)."),
    device: str = typer.Option(None, "--device", help="Training device (cpu, cuda); default: cuda when available."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Hide labels per condition (the dense labels are the oracle), train one model per condition and seed
    with the same epochs and number of annotated slices, and score them on held-out fully labelled scans."""
    from apps.simulate import (
        DEFAULT_EPOCHS,
        DEFAULT_ITERATIONS,
        DEFAULT_LR,
        DEFAULT_SEEDS,
        DEFAULT_SYNTH_SHAPE,
        DEFAULT_SYNTH_SPACING,
        DEFAULT_SYNTH_SUBJECTS,
        SimulationConfig,
        run_simulation,
    )
    from apps.simulation.conditions import DEFAULT_AXES, DEFAULT_DISPERSIONS

    shape = DEFAULT_SYNTH_SHAPE
    if synth_shape:
        try:
            shape = tuple(int(v) for v in synth_shape.replace("x", ",").split(","))
            assert len(shape) == 3
        except (ValueError, AssertionError):
            typer.echo(f"error: --synth-shape must be three integers like 54,72,72, got {synth_shape!r}", err=True)
            raise typer.Exit(2) from None
    overrides = {}
    if threads:
        overrides["threads"] = int(threads)
    if device:
        overrides["device"] = device
    cfg = SimulationConfig(
        out=out,
        data=data,
        epochs=epochs or DEFAULT_EPOCHS,
        iterations=iterations or DEFAULT_ITERATIONS,
        seeds=seeds or DEFAULT_SEEDS,
        rounds=rounds,
        dispersions=tuple(_split(dispersion)) or DEFAULT_DISPERSIONS,
        axes=tuple(_split(axis)) or DEFAULT_AXES,
        selections=tuple(_split(selection)) or ("equidistant",),
        margins=tuple(margin) if margin else (0.1,),
        baseline=not no_baseline,
        full_volumes=full_volumes,
        count_axis=count_axis,
        test_scans=test_scans,
        synth_subjects=synth_subjects or DEFAULT_SYNTH_SUBJECTS,
        synth_shape=shape,
        synth_spacing=synth_spacing or DEFAULT_SYNTH_SPACING,
        preset=preset,
        lr=DEFAULT_LR if lr is None else lr,
        train_overrides=overrides,
        strategies=tuple(_split(strategy)) or ("uncertainty", "random", "equidistant"),
        seed_slices=seed_slices,
        round_slices=round_slices,
        round_epochs=round_epochs,
        loop_axis=loop_axis,
        loop_dispersion=loop_dispersion,
        progress=not quiet,
    )
    try:
        summary = run_simulation(cfg)
    except ValueError as exc:  # SimulationError, ConditionError, BudgetError, LabelError, ...
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo((out / "results.md").read_text())
    typer.echo(f"{len(summary.results)} result(s), {len(summary.skipped)} reused; wall time "
               f"{summary.wall_seconds:.0f} s; files in {out}")
