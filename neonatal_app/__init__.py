"""neolabel's MONAI Label app (``main.py`` + ``lib/``): adapters between MONAI Label and strategies/training."""

from __future__ import annotations

import importlib.util


def ensure_project_training() -> None:
    """Fail early and clearly when another top-level ``training`` package shadows ours.

    sam2 (a MONAI Label dependency) ships its training scripts as a top-level ``training``
    package; ``make venv`` removes it. Without this check the failure would surface later as a
    puzzling ``No module named 'training.data.labels'``.
    """
    if importlib.util.find_spec("training.data.labels") is None:
        raise ImportError(
            "the 'training' package found first is not neolabel's (sam2 installs one of the same name); "
            "run `make venv`, which removes sam2's copy"
        )


ensure_project_training()
