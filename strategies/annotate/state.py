"""Annotation state that lives with the study set: ``<studies>/.neolabel/state.json``.

Assignments, leases, rounds, raw-submission records, budget spent, the admin's strategy settings
and retraining counters must survive a server restart and be shared with the training subprocess
MONAI Label starts, so they are kept in one JSON file, read and written under a file lock and
replaced atomically (a crash mid-write leaves the previous state).
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from training.data.nifti import atomic_write_text

STATE_VERSION = 1
STATE_DIR = ".neolabel"


class StateError(ValueError):
    """The state file exists but cannot be read (corrupt JSON, wrong version)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def empty_state() -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "strategy": {},  # persisted admin strategy settings (lib/config.STRATEGY_KEYS)
        "images": {},  # image id -> {"assignments": [...], "submissions": [...], "rounds": n}
        "labels_saved": 0,  # every accepted label save
        "labels_since_train": 0,  # accepted saves since the last training started
        "trainings": [],  # short records of finished trainings
    }


class StateStore:
    """Locked, atomic read-modify-write access to ``state.json``.

    ``with store.update() as state:`` holds a process-local lock and a file lock for the whole
    read-modify-write, then writes atomically; ``store.read()`` returns a snapshot.
    """

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.json"
        self._flock = FileLock(str(self.dir / "state.lock"))
        self._tlock = threading.Lock()  # not re-entrant on purpose: never nest update() calls

    def _load(self) -> dict[str, Any]:
        if not self.path.exists():
            return empty_state()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.path}: unreadable annotation state ({exc}); restore it from a backup") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise StateError(f"{self.path}: unsupported state version {data.get('version')!r}")
        base = empty_state()
        base.update(data)
        return base

    def read(self) -> dict[str, Any]:
        with self._tlock, self._flock:
            return self._load()

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        with self._tlock, self._flock:
            state = self._load()
            before = copy.deepcopy(state)
            yield state
            if state != before:
                atomic_write_text(self.path, json.dumps(state, indent=1, sort_keys=True))


def image_record(state: dict[str, Any], image_id: str) -> dict[str, Any]:
    """The state record of one image, created on first use."""
    rec = state["images"].setdefault(image_id, {})
    rec.setdefault("assignments", [])
    rec.setdefault("submissions", [])
    rec.setdefault("rounds", 0)
    return rec
