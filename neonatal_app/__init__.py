"""neolabel's MONAI Label app (``main.py`` + ``lib/``): adapters between MONAI Label and strategies/training.

Importing the package puts this project's root first on ``sys.path`` (and ``PYTHONPATH``, which MONAI
Label's train subprocess inherits): sam2, a MONAI Label dependency, installs an unrelated top-level
``training`` package into site-packages that would otherwise shadow ours whenever the process was not
started from the repository (``monailabel start_server``, console scripts).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _prefer_project_packages() -> None:
    root = Path(__file__).resolve().parent.parent
    if not (root / "training" / "labels.py").is_file():
        return  # installed as a wheel: nothing to do
    r = str(root)
    if sys.path[:1] != [r]:
        sys.path.insert(0, r)
    mod = sys.modules.get("training")
    if mod is not None and not str(getattr(mod, "__file__", "") or "").startswith(r):
        for name in [m for m in sys.modules if m == "training" or m.startswith("training.")]:
            del sys.modules[name]
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != r]
    os.environ["PYTHONPATH"] = os.pathsep.join([r, *parts])


_prefer_project_packages()
