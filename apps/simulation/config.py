"""What a simulation run depends on, with the one set of defaults the command line also uses.

Kept free of torch so ``neolabel simulate --help`` and the planning code can read the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from apps.simulation.conditions import DEFAULT_AXES, DEFAULT_DISPERSIONS, Condition, build_conditions
from apps.simulation.data import SimulationError
from apps.simulation.executor import ExecutorSettings
from strategies.plan.axes import AXES

# Default synthetic run: sized to finish within ~15 minutes on 2 CPU cores (see README).
DEFAULT_EPOCHS = 6
DEFAULT_ITERATIONS = 50
DEFAULT_SEEDS = 2
DEFAULT_SYNTH_SUBJECTS = 16
DEFAULT_SYNTH_SHAPE = (36, 48, 48)
DEFAULT_SYNTH_SPACING = 3.0
# Loop mode: the active choices against foreground-aware random (nnActive's bar) and the planner.
DEFAULT_STRATEGIES = ("claspe", "uncertainty", "fgrandom", "equidistant")
# Short CPU runs learn much faster with AdamW at 1e-2 than at training's 3e-3 default (one measured
# pair on the default synthetic set, 300 iterations: tissue Dice 0.43 vs 0.29); --lr 0 keeps training's default.
DEFAULT_LR = 1e-2


@dataclass
class SimulationConfig:
    """Everything a simulation run depends on (stored in ``simulation.json``)."""

    out: Path
    data: Path | None = None
    epochs: int = DEFAULT_EPOCHS
    iterations: int | None = DEFAULT_ITERATIONS  # per epoch; None → training's own rule
    seeds: int = DEFAULT_SEEDS
    seed_offset: int = 0
    rounds: int = 0
    # conditions (static mode)
    dispersions: tuple[str, ...] = DEFAULT_DISPERSIONS
    # budget curves: percent of the pool's usable slices per point (empty = the baseline's slice count)
    budgets: tuple[str, ...] = ()
    axes: tuple[str, ...] = DEFAULT_AXES
    selections: tuple[str, ...] = ("equidistant",)
    margins: tuple[float, ...] = (0.1,)
    baseline: bool = True
    full_volumes: int = 2
    count_axis: str = "axial"
    # data
    test_scans: int = 4
    split_seed: int = 0
    synth_subjects: int = DEFAULT_SYNTH_SUBJECTS
    synth_shape: tuple[int, int, int] = DEFAULT_SYNTH_SHAPE
    synth_spacing: float = DEFAULT_SYNTH_SPACING
    synth_seed: int = 0
    # training
    preset: str = "tiny"
    lr: float | None = DEFAULT_LR
    train_overrides: dict[str, Any] = field(default_factory=dict)
    # loop mode
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    seed_slices: int | None = None  # None → half the static budget
    round_slices: int | None = None  # None → a quarter of the static budget
    round_epochs: int | None = None  # None → max(1, epochs // 2)
    loop_dispersion: float = 0.33
    loop_axis: str = "axial"
    progress: bool = True
    # where model jobs run (apps/simulation/executor.py); it changes no result, so it is in no result's key
    executor: str = "inprocess"  # inprocess | local | slurm | debug
    jobs: int = 1  # local: processes at once
    slurm_partition: str | None = None
    slurm_gpus_per_job: int = 1
    slurm_cpus_per_job: int = 8
    slurm_time: int = 120  # minutes per job
    slurm_array_parallelism: int = 16

    def executor_settings(self) -> ExecutorSettings:
        return ExecutorSettings(kind=self.executor, jobs=self.jobs, slurm_partition=self.slurm_partition,
                                slurm_gpus_per_job=self.slurm_gpus_per_job, slurm_cpus_per_job=self.slurm_cpus_per_job,
                                slurm_time_min=self.slurm_time, slurm_array_parallelism=self.slurm_array_parallelism,
                                threads=self.train_overrides.get("threads"))

    def conditions(self) -> list[Condition]:
        return build_conditions(self.dispersions, self.axes, self.selections, self.margins, baseline=self.baseline,
                                budgets=self.budgets)

    def train_settings(self) -> dict[str, Any]:
        s: dict[str, Any] = {"preset": self.preset, "tensorboard": False}
        if self.lr:
            s["lr"] = float(self.lr)
        if self.iterations is not None:
            s["iterations_per_epoch"] = int(self.iterations)
        s.update(self.train_overrides)
        return s

    def check(self) -> SimulationConfig:
        if self.epochs < 1:
            raise SimulationError("--epochs must be ≥ 1")
        if self.seeds < 1:
            raise SimulationError("--seeds must be ≥ 1")
        if self.rounds < 0:
            raise SimulationError("--rounds must be ≥ 0")
        if self.iterations is not None and self.iterations < 1:
            raise SimulationError("--iterations must be ≥ 1")
        if self.full_volumes < 1:
            raise SimulationError("--full-volumes must be ≥ 1")
        if self.rounds and self.budgets and len(self.budgets) != self.rounds + 1:
            raise SimulationError(
                f"loop mode with --budgets: the seed set is the first budget and each round grows to the next, "
                f"so --rounds must be {len(self.budgets) - 1} for {len(self.budgets)} budgets (got {self.rounds})"
            )
        self.executor_settings().check()
        if self.count_axis not in AXES:
            raise SimulationError(f"count axis must be one of {', '.join(AXES)}, got {self.count_axis!r}")
        if self.data is not None and not Path(self.data).is_dir():
            raise SimulationError(f"{self.data}: not a folder (expected a dHCP release-3 anatomical tree)")
        return self

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"] = str(self.out)
        d["data"] = None if self.data is None else str(self.data)
        return d


@dataclass
class SimulationSummary:
    out: Path
    results: list[dict]
    skipped: list[str]
    files: list[Path]
    wall_seconds: float
    budgets: dict[int, int] = field(default_factory=dict)
