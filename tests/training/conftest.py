"""Fixtures shared by the learning core's tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _drawem_label(shape=(24, 26, 22), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[3:21, 3:23, 3:19] = 4
    for c in (1, 2, 3, 5, 6):
        lo = rng.integers(4, 10, 3)
        size = rng.integers(4, 9, 3)
        lab[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = c
    return lab


@pytest.fixture
def drawem_label() -> Callable[..., np.ndarray]:
    """A factory of small seeded drawem9-like labels: a head box (class 4) holding boxes of five tissues."""
    return _drawem_label
