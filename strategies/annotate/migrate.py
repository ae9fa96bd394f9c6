"""One-time import of the JSON annotation state (``.neolabel/state.json``, neolabel ≤ 0.1) into SQLite.

Study sets annotated before the database keep everything: strategy settings, leases, annotated
slices (into the budget ledger), visits and rounds, the last assignment of every annotator,
submission records, counters and trainings. The JSON file is renamed to ``state.json.imported``
in the same transaction's aftermath, so the import runs once; a crash before the rename re-runs it
on the next start, which is harmless because the import only runs on an empty database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from strategies.annotate.db import AnnotationDB, add_counter, audit, put_json
from strategies.plan.incremental import AssignmentState, to_utc

log = logging.getLogger(__name__)

LEGACY_VERSION = 1


class MigrationError(ValueError):
    """The legacy state file cannot be read; nothing was imported."""


def _iso(text: str) -> str:
    return to_utc(text).isoformat(timespec="seconds")


def _import_images(con: Any, images: dict[str, Any]) -> None:
    for image_id, rec in images.items():
        con.execute(
            "INSERT INTO scans (id, rounds) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET rounds = excluded.rounds",
            (image_id, int(rec.get("rounds", 0))),
        )
        for client_id, last in (rec.get("last_assignments") or {}).items():
            con.execute(
                "INSERT OR REPLACE INTO last_assignments (image, client_id, parts, strategy, submitted) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    image_id,
                    client_id,
                    json.dumps(last.get("parts", []), sort_keys=True),
                    str(last.get("strategy", "budget")),
                    int(bool(last.get("submitted"))),
                ),
            )
        for sub in rec.get("submissions", []):
            con.execute(
                "INSERT INTO submissions (image, client_id, saved_at, mode, raw_path, slices_accepted, summary) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    image_id,
                    str(sub.get("client_id", "")),
                    str(sub.get("saved_at", "")),
                    str(sub.get("mode", "assignment")),
                    sub.get("raw_submission"),
                    int(sub.get("slices_accepted", 0)),
                    json.dumps(sub, sort_keys=True),
                ),
            )


def _import_assignment(con: Any, raw: dict[str, Any] | None) -> None:
    if not raw:
        return
    a = AssignmentState.from_json(raw)
    for image_id, axes in a.annotated.items():
        con.execute("INSERT INTO scans (id) VALUES (?) ON CONFLICT (id) DO NOTHING", (image_id,))
        con.execute(
            "UPDATE scans SET annotated = ?, visits = ? WHERE id = ?",
            (
                json.dumps({ax: sorted(v) for ax, v in axes.items()}, sort_keys=True),
                int(a.visits.get(image_id, 0)),
                image_id,
            ),
        )
        con.executemany(
            "INSERT OR IGNORE INTO ledger (image, axis, idx) VALUES (?, ?, ?)",
            [(image_id, ax, int(i)) for ax, v in axes.items() for i in v],
        )
    for image_id, n in a.visits.items():
        con.execute(
            "INSERT INTO scans (id, visits) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET visits = excluded.visits",
            (image_id, int(n)),
        )
    add_counter(con, "visits", sum(a.visits.values()), reset=True)
    for lease in a.leases:
        con.execute(
            "INSERT OR REPLACE INTO leases (image, client_id, assignments, n_slices, issued_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                lease.image,
                lease.client_id,
                json.dumps([x.to_json() for x in lease.assignments]),
                lease.n_slices,
                _iso(lease.issued_at),
                _iso(lease.expires_at),
            ),
        )


def import_state_json(db: AnnotationDB, path: str | Path) -> bool:
    """Import ``path`` into an empty database once; True if something was imported."""
    path = Path(path)
    if not path.is_file():
        return False
    con = db.read()
    if con.execute("SELECT COUNT(*) FROM settings WHERE key = 'imported_state_json'").fetchone()[0]:
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MigrationError(f"{path}: unreadable annotation state ({exc}); restore it from a backup") from exc
    if not isinstance(data, dict) or data.get("version") != LEGACY_VERSION:
        raise MigrationError(
            f"{path}: unsupported state version {data.get('version') if isinstance(data, dict) else data!r}"
        )
    with db.transaction() as con:
        if con.execute("SELECT COUNT(*) FROM settings WHERE key = 'imported_state_json'").fetchone()[0]:
            return False  # another process (MONAI Label's training subprocess) imported it meanwhile
        if data.get("strategy"):
            put_json(con, "settings", "strategy", data["strategy"])
        put_json(con, "settings", "conf_applied", data.get("conf_applied") or {})
        _import_images(con, data.get("images") or {})
        _import_assignment(con, data.get("assignment"))
        add_counter(con, "labels_saved", int(data.get("labels_saved", 0)), reset=True)
        add_counter(con, "labels_since_train", int(data.get("labels_since_train", 0)), reset=True)
        for t in data.get("trainings") or []:
            con.execute(
                "INSERT INTO trainings (started, seconds, published, message) VALUES (?, ?, ?, ?)",
                (t.get("started"), t.get("seconds"), t.get("published"), t.get("message")),
            )
        put_json(con, "settings", "imported_state_json", {"from": str(path)})
        audit(con, "server", "state.imported", str(path), {"images": len(data.get("images") or {})})
    with contextlib.suppress(FileNotFoundError):  # renamed by a process that started at the same time
        os.replace(path, path.with_name(path.name + ".imported"))
    log.info("imported the JSON annotation state %s into %s", path, db.path)
    return True
