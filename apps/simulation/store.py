"""Result files of one simulation run: written atomically, found again on restart (resume)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from training.data.nifti import atomic_write_text


def settings_key(obj: Any) -> str:
    """Short stable hash of a JSON-able object (what must match for a stored result to be reused)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Atomic JSON write (NaN → null) so an interrupted run never leaves a half-written result."""
    return atomic_write_text(path, json.dumps(_clean(obj), indent=1, sort_keys=False) + "\n")


def read_result(path: Path, key: str) -> dict | None:
    """The stored result at ``path`` if it exists, parses and was made with the same ``key``."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("status") != "done":
        return None
    return data


def prepare_model_dir(model_dir: Path, key: str) -> bool:
    """Whether training may resume from ``model_dir/last.pt`` (an interrupted model with the same key).

    A model folder left by other settings is cleared, so a stale checkpoint is never continued.
    """
    import shutil

    marker = model_dir / "simulation-key.txt"
    if marker.is_file() and marker.read_text().strip() == key and (model_dir / "last.pt").is_file():
        return True
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, key + "\n")
    return False
