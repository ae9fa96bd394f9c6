"""Transfer-learning freeze levels, by name: the one list of valid ``freeze`` values.

Free of torch on purpose: the app's settings (``strategies``, which must not import torch) and the
command line validate a level without the network code. How a level is applied to a network's
structure is :mod:`training.fit.finetune`.

Levels (Richter & Fetit 2022, transfer experiment), with ``d`` = distance from the bottleneck
(:func:`training.model.levels.unet_levels`):

* ``none``    — no training at all: the source model is evaluated as it is;
* ``shallow`` — ``d ≤ 1``: bottleneck + the directly adjacent encoder and decoder block;
* ``medium``  — ``d ≤ 2``: + one more encoder and decoder block on each side;
* ``deep``    — ``d ≤ 3``: + two more;
* ``full``    — every parameter trains (fine-tuning from the checkpoint);
* ``scratch`` — every parameter trains from random initialisation (the checkpoint is not loaded).
"""

from __future__ import annotations

FREEZE_LEVELS: tuple[str, ...] = ("none", "shallow", "medium", "deep", "full", "scratch")
"""Valid ``freeze`` values; ``full`` is the default (everything trains, from ``init`` when given)."""

FREEZE_DEPTH: dict[str, int] = {"shallow": 1, "medium": 2, "deep": 3}
"""Deepest distance from the bottleneck that trains, for the levels that freeze part of the network."""

NEEDS_INIT: tuple[str, ...] = ("none", *FREEZE_DEPTH)
"""Levels that keep some weights as they are: meaningless without a checkpoint to start from."""


class FreezeError(ValueError):
    """Unknown freeze level, a network whose U-Net structure cannot be found, or a bad init checkpoint."""


def check_level(level: str) -> str:
    """Normalised freeze level or a :class:`FreezeError` listing the valid ones (so a typo fails early)."""
    lv = str(level).strip().lower()
    if lv not in FREEZE_LEVELS:
        raise FreezeError(f"unknown freeze level {level!r}; choose one of {', '.join(FREEZE_LEVELS)}")
    return lv
