"""Where a study set keeps neolabel's own files, and how the annotation state is opened.

Everything neolabel writes beside the scans lives under ``<studies>/.neolabel/``: the annotation
database (``annotation.db``), kept uploads (``submissions/``, ``refused/``), caches and the model.
:func:`open_state` opens the database and imports a JSON state of an older neolabel once.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from strategies.annotate.db import AnnotationDB
from strategies.annotate.migrate import import_state_json

STATE_DIR = ".neolabel"
DB_NAME = "annotation.db"
LEGACY_STATE = "state.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_state(studies: str | Path) -> AnnotationDB:
    """The study set's annotation database (created, migrated, and fed a legacy ``state.json`` once)."""
    root = Path(studies) / STATE_DIR
    db = AnnotationDB(root / DB_NAME)
    import_state_json(db, root / LEGACY_STATE)
    return db
