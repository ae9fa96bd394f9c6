"""What a training run hands back: its own module so :mod:`training.fit.finetune` (freeze level
``none`` publishes without training) and :mod:`training.fit.train` share it without importing
each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainResult:
    """Where the checkpoints are and how the run went (the app publishes ``best_path`` from it)."""

    out_dir: Path
    best_path: Path
    last_path: Path
    epochs_completed: int
    best_metric: float | None  # validation tissue Dice of best.pt (None without validation)
    history: list[dict]
    n_train: int
    stopped_early: bool = False
