"""The annotation database: migrations, refusal of a newer schema, rollback, an append-only audit."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

import strategies.annotate.db as dbmod
from strategies.annotate.db import AnnotationDB, DBError, add_counter, audit, counter


def test_a_database_of_an_older_schema_is_migrated_in_place(tmp_path, monkeypatch):
    path = tmp_path / "a.db"
    monkeypatch.setattr(dbmod, "SCHEMA_VERSION", 1)
    old = AnnotationDB(path)
    with old.transaction() as con:
        add_counter(con, "labels_saved", 3)
    old.close()
    monkeypatch.undo()
    new = AnnotationDB(path)
    con = new.read()
    assert con.execute("PRAGMA user_version").fetchone()[0] == dbmod.SCHEMA_VERSION
    assert counter(con, "labels_saved") == 3  # data survives the upgrade
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"scans", "leases", "submissions", "ledger", "audit", "settings"} <= tables
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert new.integrity_check() == "ok"
    plan = " ".join(str(r[-1]) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT actor FROM audit WHERE action = 'assign' AND target = 'x' ORDER BY id DESC LIMIT 1"))
    assert "audit_by_action_target" in plan  # last_granted_to reads one index range, not the whole audit


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "b.db"
    AnnotationDB(path).close()
    with sqlite3.connect(path) as con:
        con.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    with pytest.raises(DBError, match="newer"):
        AnnotationDB(path)


def test_a_failed_transaction_changes_nothing_and_the_audit_is_append_only(tmp_path):
    db = AnnotationDB(tmp_path / "c.db")
    with pytest.raises(RuntimeError), db.transaction() as con:
        add_counter(con, "labels_saved", 1)
        raise RuntimeError("crash inside the request")
    assert counter(db.read(), "labels_saved") == 0
    with db.transaction() as con:
        audit(con, "alice", "label.accepted", "scan-1", {"slices": 3})
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.transaction() as con:
        con.execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), db.transaction() as con:
        con.execute("DELETE FROM audit")
    rows = db.read().execute("SELECT actor, action, target FROM audit").fetchall()
    assert [tuple(r) for r in rows] == [("alice", "label.accepted", "scan-1")]


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)  # the usual umask: what SQLite alone would create 0644 with
    yield
    os.umask(old)


def _modes(path) -> dict[str, int]:
    return {suffix: stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) for suffix in ("", "-wal", "-shm")}


def test_the_database_and_its_wal_and_shm_are_owner_only(tmp_path, umask_022):
    path = tmp_path / "state" / "annotation.db"
    db = AnnotationDB(path)
    with db.transaction() as con:
        audit(con, "cli", "user.add", "alice")
    assert _modes(path) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    db.close()

    older = tmp_path / "older.db"  # what an older neolabel left: world-readable, WAL and SHM too
    keep_open = sqlite3.connect(older)  # an open connection keeps -wal and -shm on disk
    keep_open.execute("PRAGMA journal_mode = WAL")
    keep_open.execute("CREATE TABLE t (x)")
    for suffix in ("", "-wal", "-shm"):
        os.chmod(f"{older}{suffix}", 0o644)
    AnnotationDB(older).close()
    assert _modes(older) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    keep_open.close()
