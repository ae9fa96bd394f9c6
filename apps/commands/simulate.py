"""``neolabel simulate``: replay budget strategies with dense labels as the oracle (heavy imports inside).

Every option defaults to None and then takes :class:`~apps.simulation.config.SimulationConfig`'s default."""

from __future__ import annotations

from pathlib import Path

import typer

from apps.simulation.conditions import STATIC_SELECTIONS
from apps.simulation.config import SimulationConfig
from apps.simulation.executor import EXECUTORS
from apps.simulation.loop import LOOP_STRATEGIES
from strategies.plan.selection import AXIS_MODES
from training.model.presets import PRESETS

_D = SimulationConfig(out=Path("."))  # the defaults shown in --help


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
    epochs: int = typer.Option(
        None, "--epochs", help=f"Epochs per model (same for every condition). Default {_D.epochs}."
    ),
    seeds: int = typer.Option(None, "--seeds", help=f"Seeds per condition. Default {_D.seeds}."),
    rounds: int = typer.Option(
        None, "--rounds", help="Active-learning loop mode with this many rounds (0 = static conditions)."
    ),
    iterations: int = typer.Option(
        None, "--iterations", help=f"Iterations per epoch (same for every model). Default {_D.iterations}."
    ),
    budgets: list[str] = typer.Option(
        None, "--budgets", help="Budget curves: budgets in percent of the pool's usable slices (comma list, e.g. "
        "1,2,5,10,20,33,100; 100 = every usable slice of every pool scan). No dense baseline then. With --rounds: "
        "the loop's seed set and the slices after each round (rounds + 1 values).",
    ),
    dispersion: list[str] = typer.Option(
        None, "--dispersion", help="Dispersion level(s): fraction of a scan's slices (0.33, 33%) or '1slice'; "
        "comma list or repeated."
    ),
    axis: list[str] = typer.Option(
        None, "--axis", help=f"Axes: {', '.join(AXIS_MODES)} (comma list). Default {','.join(_D.axes)}."
    ),
    selection: list[str] = typer.Option(
        None, "--selection", help=f"Slice selection: {', '.join(STATIC_SELECTIONS)}. Repeatable."
    ),
    margin: list[float] = typer.Option(
        None, "--margin", help="Margin(s): fraction of the brain extent excluded per end."
    ),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Leave out the full-volume baseline."),
    full_volumes: int = typer.Option(
        None, "--full-volumes", help="Scans of the full-volume baseline (sets the budget)."
    ),
    count_axis: str = typer.Option(None, "--count-axis", help="Axis along which a full volume's slices are counted."),
    test_scans: int = typer.Option(None, "--test-scans", help="Held-out, densely labelled test scans."),
    preset: str = typer.Option(None, "--preset", help=f"Network preset: {', '.join(PRESETS)}."),
    lr: float = typer.Option(None, "--lr", help=f"Learning rate. Default {_D.lr} (AdamW); 0 = training's default."),
    synth_subjects: int = typer.Option(
        None, "--synth-subjects", help=f"Synthetic scans to generate (no DATA). Default {_D.synth_subjects}."
    ),
    synth_shape: str = typer.Option(
        None,
        "--synth-shape",
        help=f"Synthetic volume shape 'X,Y,Z' (no DATA). Default {','.join(map(str, _D.synth_shape))}.",
    ),
    synth_spacing: float = typer.Option(
        None, "--synth-spacing", help=f"Synthetic voxel size in mm. Default {_D.synth_spacing}."
    ),
    strategy: list[str] = typer.Option(
        None, "--strategy", help=f"Loop strategies: {', '.join(LOOP_STRATEGIES)} (comma list or repeated). "
        f"Default {','.join(_D.strategies)}."
    ),
    seed_slices: int = typer.Option(None, "--seed-slices", help="Loop: slices of the initial seed set."),
    round_slices: int = typer.Option(None, "--round-slices", help="Loop: slices annotated per round."),
    round_epochs: int = typer.Option(None, "--round-epochs", help="Loop: warm-start epochs per round."),
    loop_axis: str = typer.Option(
        None, "--loop-axis", help="Loop: slicing axis (sagittal/coronal/axial/random/mixed)."
    ),
    loop_dispersion: float = typer.Option(
        None, "--loop-dispersion", help="Loop: fraction of a scan's slices per visit."
    ),
    executor: str = typer.Option(
        None, "--executor", help=f"Where the model jobs run: {', '.join(EXECUTORS)} (inprocess = one after another "
        f"in this process; local = --jobs processes; slurm = submitit array jobs; debug = submitit in this process). "
        f"Default {_D.executor}."
    ),
    jobs: int = typer.Option(
        None, "--jobs", help=f"--executor local: model jobs at once (each gets cores/jobs threads). Default {_D.jobs}."
    ),
    slurm_partition: str = typer.Option(None, "--slurm-partition", help="--executor slurm: partition."),
    slurm_gpus_per_job: int = typer.Option(
        None, "--slurm-gpus-per-job", help=f"--executor slurm: GPUs per model job. Default {_D.slurm_gpus_per_job}."
    ),
    slurm_cpus_per_job: int = typer.Option(
        None, "--slurm-cpus-per-job", help=f"--executor slurm: CPUs per model job. Default {_D.slurm_cpus_per_job}."
    ),
    slurm_time: int = typer.Option(
        None, "--slurm-time", help=f"--executor slurm: time limit per job in minutes. Default {_D.slurm_time}."
    ),
    slurm_array_parallelism: int = typer.Option(
        None, "--slurm-array-parallelism",
        help=f"--executor slurm: model jobs running at once. Default {_D.slurm_array_parallelism}.",
    ),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: all cores)."),
    device: str = typer.Option(None, "--device", help="Training device (cpu, cuda); default: cuda when available."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Hide labels per condition (the dense labels are the oracle), train one model per condition and seed
    with the same epochs and number of annotated slices, and score them on held-out fully labelled scans."""
    from apps.simulation.run import run_simulation

    shape = None
    if synth_shape:
        try:
            shape = tuple(int(v) for v in synth_shape.replace("x", ",").split(","))
            assert len(shape) == 3
        except (ValueError, AssertionError):
            typer.echo(f"error: --synth-shape must be three integers like 54,72,72, got {synth_shape!r}", err=True)
            raise typer.Exit(2) from None
    overrides = {}
    if threads:
        import torch  # deferred: command modules import torch only when they run

        torch.set_num_threads(int(threads))  # scoring here uses the threads training uses (and each job uses)
        overrides["threads"] = int(threads)
    if device:
        overrides["device"] = device
    given = {
        "epochs": epochs,
        "iterations": iterations,
        "seeds": seeds,
        "rounds": rounds,
        "budgets": tuple(_split(budgets)) or None,
        "dispersions": tuple(_split(dispersion)) or None,
        "axes": tuple(_split(axis)) or None,
        "selections": tuple(_split(selection)) or None,
        "margins": tuple(margin) if margin else None,
        "full_volumes": full_volumes,
        "count_axis": count_axis,
        "test_scans": test_scans,
        "synth_subjects": synth_subjects,
        "synth_shape": shape,
        "synth_spacing": synth_spacing,
        "preset": preset,
        "lr": lr,
        "strategies": tuple(_split(strategy)) or None,
        "seed_slices": seed_slices,
        "round_slices": round_slices,
        "round_epochs": round_epochs,
        "loop_axis": loop_axis,
        "loop_dispersion": loop_dispersion,
        "executor": executor,
        "jobs": jobs,
        "slurm_partition": slurm_partition,
        "slurm_gpus_per_job": slurm_gpus_per_job,
        "slurm_cpus_per_job": slurm_cpus_per_job,
        "slurm_time": slurm_time,
        "slurm_array_parallelism": slurm_array_parallelism,
    }
    cfg = SimulationConfig(
        out=out,
        data=data,
        baseline=not no_baseline,
        train_overrides=overrides,
        progress=not quiet,
        **{k: v for k, v in given.items() if v is not None},
    )
    try:
        summary = run_simulation(cfg)
    except ValueError as exc:  # SimulationError, ConditionError, BudgetError, LabelError, ...
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo((out / "results.md").read_text())
    typer.echo(
        f"{len(summary.results)} result(s), {len(summary.skipped)} reused; wall time "
        f"{summary.wall_seconds:.0f} s; files in {out}"
    )
