"""The network presets, by name: the one table of what ``tiny``, ``cpu`` and ``paper`` mean.

Kept apart from :mod:`training.model.network` and free of torch/MONAI on purpose: the app's
settings (``strategies``, which must not import torch) and the command line list and validate
preset names without paying the MONAI import. :func:`training.model.network.network_config`
resolves an entry into a full ``NetworkConfig``.

Per preset: filters per level, patch, spacing, max levels; ``large_windows``: whether the fast
predictor may run one window much larger than the training patch (instance norm then sees a larger
context) — measured per preset with ``bench/inference.py`` and held-out scans, see
``training.infer.settings``.
"""

from __future__ import annotations

from typing import Any

PRESET_SPECS: dict[str, dict[str, Any]] = {
    # Tests only: tiny and fast; 4 levels so deep supervision has one head.
    "tiny": {"filters": (8, 16, 32, 32), "patch": (32, 32, 32), "spacing": (0.5, 0.5, 0.5), "max_levels": 4,
             "large_windows": False},
    # CPU preset (DESIGN.md measured 0.57 s/iteration at 48³, batch 2, 2 threads): 4 levels, 16–128.
    # One whole-head window lost tissue Dice (0.948 → 0.926 on 4 held-out scans): patch-size windows.
    "cpu": {"filters": (16, 32, 64, 128), "patch": (48, 48, 48), "spacing": (0.5, 0.5, 0.5), "max_levels": 4,
            "large_windows": False},
    # Richter & Fetit 2022: 128³ at 0.5 mm, 6 levels, 32–320 filters, bottleneck 4³.
    # One head window (224×256×224 at 40 w), GPU-trained weights: agreement 0.985 with the paper's settings,
    # Dice vs ground truth 0.9748 vs 0.9753; patch-size windows are slower (21.8–33.3 s vs 12.2–16.7 s).
    "paper": {"filters": (32, 64, 128, 256, 320, 320), "patch": (128, 128, 128), "spacing": (0.5, 0.5, 0.5),
              "max_levels": 6, "large_windows": True},
}

PRESETS: tuple[str, ...] = tuple(PRESET_SPECS)
"""Valid preset names, smallest first (the order help texts and error messages list them in)."""
