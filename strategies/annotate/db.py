"""The annotation state of a study set in SQLite: ``<studies>/.neolabel/annotation.db``.

One database file holds what is assigned, leased, submitted, spent, configured and trained, plus an
append-only audit trail; label volumes stay NIfTI files and a row points at a file only after the
file is durable. WAL mode lets the server, MONAI Label's training subprocess and readers work at
once; every request is one ``BEGIN IMMEDIATE`` transaction (writers queue on ``busy_timeout``
instead of failing); ``synchronous=FULL`` so an acknowledged commit survives a kill -9 and a power
cut. The schema is versioned (``PRAGMA user_version``) and upgraded by numbered migrations. It holds
password hashes, so the file is its owner's only (0600; SQLite gives ``-wal`` and ``-shm`` the same mode).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 30_000

# Migration n brings the schema from version n-1 to n; never edit a released one, add the next.
MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    -- per scan: planner data (brain extents as entry JSON and their source: mask, model or head; the
    -- place in the planner's order and what the current budget leaves of it, plan_key says for which
    -- budget) and annotation progress (visits, rounds, annotated slices per axis)
    CREATE TABLE scans (
        id TEXT PRIMARY KEY,
        image TEXT,
        stamp TEXT,
        source TEXT,
        model_version TEXT,
        entry TEXT,
        has_brain INTEGER NOT NULL DEFAULT 0,
        scan_age REAL,
        visits INTEGER NOT NULL DEFAULT 0,
        rounds INTEGER NOT NULL DEFAULT 0,
        annotated TEXT NOT NULL DEFAULT '{}',
        scores BLOB,
        plan_key TEXT,
        rank INTEGER,
        avail INTEGER,
        uncertainty REAL
    );
    CREATE INDEX scans_by_visits ON scans (plan_key, visits, rank);
    CREATE INDEX scans_by_uncertainty ON scans (plan_key, uncertainty, rank);
    CREATE TABLE leases (
        image TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        assignments TEXT NOT NULL,
        n_slices INTEGER NOT NULL,
        issued_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX leases_by_client ON leases (client_id);
    CREATE INDEX leases_by_expiry ON leases (expires_at);
    CREATE TABLE last_assignments (
        image TEXT NOT NULL,
        client_id TEXT NOT NULL,
        parts TEXT NOT NULL,
        strategy TEXT NOT NULL,
        submitted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (image, client_id)
    );
    CREATE TABLE submissions (
        id INTEGER PRIMARY KEY,
        image TEXT NOT NULL,
        client_id TEXT NOT NULL,
        saved_at TEXT NOT NULL,
        mode TEXT NOT NULL,
        raw_path TEXT,
        sha256 TEXT,
        slices_accepted INTEGER NOT NULL DEFAULT 0,
        summary TEXT NOT NULL
    );
    CREATE INDEX submissions_by_image ON submissions (image);
    -- the budget ledger: one row per annotated slice, written with the submission that annotated it
    CREATE TABLE ledger (
        image TEXT NOT NULL,
        axis TEXT NOT NULL,
        idx INTEGER NOT NULL,
        submission_id INTEGER REFERENCES submissions (id),
        PRIMARY KEY (image, axis, idx)
    );
    CREATE TABLE trainings (
        id INTEGER PRIMARY KEY,
        started TEXT,
        seconds REAL,
        published INTEGER,
        message TEXT
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT,
        detail TEXT
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
    """,
    # built-in users (strategies/annotate/users.py): argon2 hashes only; token_version grows at every password
    # change or removal, and a token carries the version it was issued for, so old tokens stop working at once
    2: """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('admin', 'reviewer', 'annotator', 'user')),
        password_hash TEXT NOT NULL,
        token_version INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # who was last handed a scan (``AnnotationLedger.last_granted_to``) without a pass over the whole audit
    3: """
    CREATE INDEX audit_by_action_target ON audit (action, target);
    """,
}


class DBError(RuntimeError):
    """The database cannot be opened or is newer than this code."""


class AnnotationDB:
    """Connections (one per thread) and transactions on the study set's annotation database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _owner_only(self.path)
        self._local = threading.local()
        with self.transaction() as con:
            self._migrate(con)

    def _connect(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
        return con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: the write lock is taken up front, so two requests
        never both read and then fail to write); committed on success, rolled back on any exception."""
        con = self._connect()
        if con.in_transaction:  # nested use inside one request: part of the outer transaction
            yield con
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # also after a failed COMMIT (disk full): never leave the lock held
                con.execute("ROLLBACK")
            raise

    def read(self) -> sqlite3.Connection:
        """A connection for reads outside a transaction (each statement sees the last commit)."""
        return self._connect()

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DBError(f"annotation database schema v{version} is newer than this neolabel (v{SCHEMA_VERSION})")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in _statements(MIGRATIONS[v]):
                con.execute(stmt)
            con.execute(f"PRAGMA user_version = {v}")

    def integrity_check(self) -> str:
        return str(self.read().execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def _owner_only(path: Path) -> None:
    """Create the database 0600 before SQLite does (it would follow the umask, usually 0644) and tighten the files
    of an older neolabel that this user owns: the users table's argon2 hashes are not for other accounts."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            if st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(p, 0o600)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``sqlite3.complete_statement`` keeps triggers whole)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


# ---------------------------------------------------------------------- small typed helpers
def get_json(con: sqlite3.Connection, table: str, key: str, default: Any = None) -> Any:
    row = con.execute(f"SELECT value FROM {table} WHERE key = ?", (key,)).fetchone()  # noqa: S608 - fixed names
    return default if row is None else json.loads(row[0])


def put_json(con: sqlite3.Connection, table: str, key: str, value: Any) -> None:
    con.execute(
        f"INSERT INTO {table} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, json.dumps(value, sort_keys=True)),
    )


def counter(con: sqlite3.Connection, name: str) -> int:
    row = con.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def add_counter(con: sqlite3.Connection, name: str, delta: int = 1, *, reset: bool = False) -> None:
    con.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = "
        + ("excluded.value" if reset else "value + excluded.value"),
        (name, int(delta)),
    )


def audit(
    con: sqlite3.Connection, actor: str, action: str, target: str | None = None, detail: dict[str, Any] | None = None
) -> None:
    """Append one audit row (who did what to which thing); never updated or deleted (triggers)."""
    con.execute(
        "INSERT INTO audit (actor, action, target, detail) VALUES (?, ?, ?, ?)",
        (actor, action, target, None if detail is None else json.dumps(detail, sort_keys=True, default=str)),
    )
