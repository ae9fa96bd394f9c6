"""The annotation ledger of one study set: strategy settings, assignments, leases, rounds, budget.

Bookkeeping over the annotation database (``AnnotationDB``): which slices were handed to whom,
which were submitted, what is spent, the admin's strategy settings, trainings, and the audit trail.
Each public method is one transaction. It knows no images, no model and no HTTP.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from strategies.annotate.catalog import ScanCatalog, annotated_of
from strategies.annotate.db import AnnotationDB, add_counter, audit, counter, get_json, put_json
from strategies.annotate.settings import STRATEGY_KEYS, AppConfig, ConfError
from strategies.annotate.submission import ANONYMOUS, SubmissionRejected, SubmissionResult
from strategies.plan.assignment import SliceAssignment
from strategies.plan.budget import BudgetConfig, volume_assignments, volume_capacity
from strategies.plan.extents import PlanEntry
from strategies.plan.incremental import Lease, without_annotated
from strategies.plan.selection import CLASS_SELECTIONS

log = logging.getLogger(__name__)


SUMMARY_KEYS = ("accepted", "ignored_voxels_outside_assignment", "device_id")  # kept with each submission row
REVISION_KEY = "settings_revision"  # in the options table: which stored settings the table was served from


def budget_config(settings: Mapping[str, Any], selection: str | None = None) -> BudgetConfig:
    """The planner's budget from the persisted strategy settings (``selection`` overrides the admin's)."""
    return BudgetConfig(
        total_slices=int(settings["budget_total_slices"]),
        dispersion=float(settings["budget_dispersion"]),
        axis=str(settings["budget_axis"]),
        margin=float(settings["budget_margin"]),
        selection=selection or str(settings["budget_selection"]),
        seed=int(settings["seed"]),
    )


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds")


def _lease(row: sqlite3.Row) -> Lease:
    return Lease(
        row["image"],
        row["client_id"],
        [SliceAssignment.from_json(a) for a in json.loads(row["assignments"])],
        row["issued_at"],
        row["expires_at"],
    )



@dataclass(frozen=True)
class Granted:
    """One next-sample decision: the assigned slices of one image and the lease that holds them."""

    image: str
    assignments: list[SliceAssignment]
    lease: Lease | None


def _spent_and_leased(con: sqlite3.Connection, now: str) -> tuple[int, int]:
    """Slices the budget has paid for: annotated (ledger rows) and held by leases open at ``now``."""
    spent = con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    leased = con.execute("SELECT COALESCE(SUM(n_slices), 0) FROM leases WHERE expires_at > ?", (now,)).fetchone()[0]
    return int(spent), int(leased)


class AnnotationLedger:
    """Settings, assignments and submissions recorded in the study set's annotation database."""

    def __init__(self, db: AnnotationDB, config: AppConfig, catalog: ScanCatalog) -> None:
        self.db = db
        self.config = config
        self.catalog = catalog
        self.last_reason: str | None = None
        self._init_settings()

    # ------------------------------------------------------------------ strategy settings
    def _init_settings(self) -> None:
        """Persisted settings win over defaults; a ``--conf`` key wins when its value is new.

        "New" = different from the value that key had at the previous start: MONAI Label rebuilds the
        app (same ``--conf``) in every training subprocess, and that must not undo an admin's edit
        made in Slicer since the server started.
        """
        with self.db.transaction() as con:
            saved = get_json(con, "settings", "strategy") or {}
            conf = self.config.strategy_settings()
            applied = get_json(con, "settings", "conf_applied") or {}
            merged = dict(conf)
            for k in STRATEGY_KEYS:
                conf_is_new = k in self.config.explicit and applied.get(k) != conf[k]
                if k in saved and not conf_is_new:
                    merged[k] = saved[k]
            put_json(con, "settings", "conf_applied", {k: conf[k] for k in STRATEGY_KEYS if k in self.config.explicit})
            try:
                AppConfig().with_updates(merged)
            except ConfError as exc:
                log.warning("ignoring invalid persisted strategy settings (%s); using --conf/defaults", exc)
                merged = self.config.strategy_settings()
            if merged != saved or get_json(con, "settings", "strategy_rev") is None:
                self._put_settings(con, merged)

    @staticmethod
    def _put_settings(con: sqlite3.Connection, settings: Mapping[str, Any]) -> None:
        """Store new settings as the next revision, keeping each revision: an options table names the one it
        was served from (``table_edits``)."""
        rev = int(get_json(con, "settings", "strategy_rev", 0)) + 1
        put_json(con, "settings", "strategy", dict(settings))
        put_json(con, "settings", f"strategy@{rev}", dict(settings))
        put_json(con, "settings", "strategy_rev", rev)

    def settings(self) -> dict[str, Any]:
        return dict(get_json(self.db.read(), "settings", "strategy"))

    def settings_table(self) -> tuple[int, dict[str, Any]]:
        """(revision, settings), read together: what an options table is served."""
        rows = dict(self.db.read().execute(
            "SELECT key, value FROM settings WHERE key IN ('strategy', 'strategy_rev')").fetchall())
        return int(json.loads(rows.get("strategy_rev", "0"))), dict(json.loads(rows["strategy"]))

    def table_edits(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The settings a Next Sample request changes.

        The Slicer plugin sends its whole options table with every Next Sample, as it was served: a table
        fetched before an admin's edit still holds the old values. A value is an edit only where it differs
        from the revision the table names (``settings_revision``), so such a stale table neither reverts the
        admin's edit nor counts as the annotator changing settings. Nor is a value some later revision holds:
        the table that made an edit still names the revision before it, and must not re-apply it at every
        Next Sample over a later admin's change. Without a known revision (an API client, an older table)
        values are compared with the current settings. An invalid value is an edit.
        """
        sent = {k: request[k] for k in STRATEGY_KEYS
                if k in request and request[k] is not None and not isinstance(request[k], list | dict)}
        if not sent:
            return {}
        con = self.db.read()
        current_rev, current = self.settings_table()
        revisions = [current]
        rev = request.get(REVISION_KEY)
        if isinstance(rev, int | str) and str(rev).strip().isdigit() and int(rev) <= current_rev:
            revisions = [get_json(con, "settings", f"strategy@{n}") for n in range(int(rev), current_rev + 1)]
            revisions = [r for r in revisions if r is not None] or [current]
        bases = [AppConfig().with_updates({k: v for k, v in r.items() if k in STRATEGY_KEYS}) for r in revisions]
        edits = {}
        for k, v in sent.items():
            try:
                changed = all(b.with_updates({k: v}).strategy_settings()[k] != getattr(b, k) for b in bases)
            except ConfError:
                changed = True
            if changed:
                edits[k] = v
        return edits

    def update_settings(self, updates: Mapping[str, Any], actor: str = ANONYMOUS) -> dict[str, Any]:
        """Apply the admin's edits (Slicer options table or API); invalid values raise ``SubmissionRejected``."""
        changes = {}
        for k, v in updates.items():
            if k not in STRATEGY_KEYS or v is None or isinstance(v, list | dict):
                continue  # a list is the unchanged choice list of the options table
            changes[k] = v
        if not changes:
            return self.settings()
        with self.db.transaction() as con:  # read and write in one transaction: concurrent edits both count
            current = AppConfig().with_updates(dict(get_json(con, "settings", "strategy")))
            try:
                new = current.with_updates(changes).strategy_settings()
            except ConfError as exc:
                raise SubmissionRejected(f"invalid strategy setting: {exc}", 400) from None
            if new == current.strategy_settings():
                return new
            self._put_settings(con, new)
            audit(con, actor, "settings.update", None, {k: new[k] for k in changes})
        return new

    # ------------------------------------------------------------------ status
    def budget_status(self, n_images: int | None = None, now: datetime | None = None) -> dict[str, Any]:
        """Budget spent, leased and left, open leases and label counters (``/info`` and next-sample answers)."""
        con = self.db.read()
        s = get_json(con, "settings", "strategy")
        now_s = _iso(now or datetime.now(timezone.utc))
        leases = con.execute(
            "SELECT image, client_id, n_slices, expires_at FROM leases WHERE expires_at > ?", (now_s,)
        ).fetchall()
        spent = con.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
        leased = sum(r["n_slices"] for r in leases)
        total = int(s["budget_total_slices"])
        return {
            "total_slices": total,
            "spent_slices": int(spent),
            "leased_slices": int(leased),
            "remaining_slices": max(0, total - spent - leased),
            "scans_touched": con.execute("SELECT COUNT(DISTINCT image) FROM ledger").fetchone()[0],
            "scans_total": n_images,
            "rounds": counter(con, "visits"),
            "open_leases": [
                {"image": r["image"], "client_id": r["client_id"], "expires_at": r["expires_at"]} for r in leases
            ],
            "labels_saved": counter(con, "labels_saved"),
            "labels_since_train": counter(con, "labels_since_train"),
            "last_reason": self.last_reason,
        }

    def labels_since_train(self) -> int:
        return counter(self.db.read(), "labels_since_train")

    def reset_labels_since_train(self) -> None:
        with self.db.transaction() as con:
            add_counter(con, "labels_since_train", 0, reset=True)

    def record_training(self, stats: Mapping[str, Any], actor: str = "server") -> None:
        with self.db.transaction() as con:
            con.execute(
                "INSERT INTO trainings (started, seconds, published, message) VALUES (?, ?, ?, ?)",
                (stats.get("started"), stats.get("seconds"), stats.get("published"), stats.get("message")),
            )
            audit(con, actor, "train.finished", None, {k: stats.get(k) for k in ("started", "published", "message")})

    def forget_image(self, image_id: str, actor: str = "server") -> None:
        """A scan left the study set: its leases free their slices, nobody can be handed it again
        (its annotation records stay: they describe work that was done)."""
        with self.db.transaction() as con:
            con.execute("DELETE FROM leases WHERE image = ?", (image_id,))
            con.execute("UPDATE last_assignments SET submitted = 1 WHERE image = ?", (image_id,))
            con.execute("UPDATE scans SET entry = NULL, has_brain = 0, plan_key = NULL WHERE id = ?", (image_id,))
            audit(con, actor, "image.forget", image_id)
        self.catalog.forget(image_id)

    def annotations_of(self, image_id: str) -> dict[str, Any]:
        """What :meth:`release_annotations` takes away — the scan's ledger rows and progress — as JSON, kept
        with the deleted label in the trash so that :meth:`restore_annotations` can count them again."""
        con = self.db.read()
        rows = con.execute("SELECT axis, idx, submission_id FROM ledger WHERE image = ? ORDER BY axis, idx",
                           (image_id,)).fetchall()
        scan = con.execute("SELECT annotated, visits FROM scans WHERE id = ?", (image_id,)).fetchone()
        return {"slices": [[r["axis"], int(r["idx"]), r["submission_id"]] for r in rows],
                "annotated": {} if scan is None else annotated_of(scan),
                "visits": 0 if scan is None else int(scan["visits"])}

    def restore_annotations(self, image_id: str, saved: Mapping[str, Any], actor: str = ANONYMOUS) -> int:
        """A deleted ``final`` label comes back from the trash: its slices (``saved``, from
        :meth:`annotations_of`) are spent again. Refused (409, nothing changed) while the scan is leased or
        once slices of it were annotated again: then the restored label and the newer work would overlap.
        The number of slices counted."""
        slices = [(str(a), int(i), sub) for a, i, sub in saved.get("slices") or []]
        now = _iso(datetime.now(timezone.utc))
        with self.db.transaction() as con:
            lease = con.execute("SELECT client_id FROM leases WHERE image = ? AND expires_at > ?",
                                (image_id, now)).fetchone()
            if lease is not None:
                raise SubmissionRejected(f"{image_id} is assigned to {lease['client_id']} now: restore its label "
                                         "after that assignment is submitted or expires", 409)
            if con.execute("SELECT 1 FROM ledger WHERE image = ? LIMIT 1", (image_id,)).fetchone() is not None:
                raise SubmissionRejected(f"slices of {image_id} were annotated again after the deletion: the old "
                                         "label is not restored over them", 409)
            spent, leased = _spent_and_leased(con, now)
            total = int(get_json(con, "settings", "strategy")["budget_total_slices"])
            if spent + leased + len(slices) > total:
                raise SubmissionRejected(
                    f"restoring {image_id}'s {len(slices)} slices would overspend the budget (now {spent} spent "
                    f"and {leased} leased of {total}): raise budget_total_slices first", 409)
            con.executemany("INSERT INTO ledger (image, axis, idx, submission_id) VALUES (?, ?, ?, ?)",
                            [(image_id, a, i, sub) for a, i, sub in slices])
            con.execute("UPDATE scans SET annotated = ?, visits = ? WHERE id = ?",
                        (json.dumps(saved.get("annotated") or {}), int(saved.get("visits") or 0), image_id))
            cfg = self.catalog.plan_cfg(con)
            if cfg is not None:
                self.catalog.replan_scan(con, image_id, cfg)
            audit(con, actor, "label.recount", image_id, {"slices": len(slices)})
        return len(slices)

    def release_annotations(self, image_id: str, actor: str = ANONYMOUS) -> int:
        """The image's ``final`` label was deleted (moved to the trash): its slices leave the budget ledger and
        the scan's progress, so they are no longer spent and the scan is offered again. The submissions and
        the audit trail stay; :meth:`restore_annotations` counts them again. The number of slices freed."""
        with self.db.transaction() as con:
            freed = con.execute("DELETE FROM ledger WHERE image = ?", (image_id,)).rowcount
            con.execute("UPDATE scans SET annotated = '{}', visits = 0 WHERE id = ?", (image_id,))
            cfg = self.catalog.plan_cfg(con)
            if cfg is not None:
                self.catalog.replan_scan(con, image_id, cfg)
            audit(con, actor, "label.release", image_id, {"slices_freed": freed})
        return freed

    # ------------------------------------------------------------------ next sample
    def grant(
        self,
        client_id: str,
        cfg: BudgetConfig,
        strategy: str,
        *,
        by_uncertainty: bool = False,
        now: datetime | None = None,
        device: str | None = None,
    ) -> Granted | None:
        """Choose and lease the next scan and slices for ``client_id``; None when there is nothing to do.

        The rules of ``strategies.plan.incremental.next_assignment``, over the database: leases expire,
        a client holding a lease gets it back, the budget counts leased slices, the scan comes from
        one indexed query (``ScanCatalog.next_candidate``)."""
        t = now or datetime.now(timezone.utc)
        with self.db.transaction() as con:
            con.execute("DELETE FROM leases WHERE expires_at <= ?", (_iso(t),))
            held = con.execute("SELECT * FROM leases WHERE client_id = ?", (client_id,)).fetchone()
            if held is not None:
                lease = _lease(held)
                return Granted(lease.image, [replace(a) for a in lease.assignments], lease)
            spent, reserved = _spent_and_leased(con, _iso(t))  # expired leases were deleted just above
            remaining = int(cfg.total_slices) - spent - reserved
            if remaining <= 0:
                return self._none(
                    f"budget of {cfg.total_slices} slices spent ({spent} annotated, {reserved} leased)", client_id
                )
            row = self.catalog.next_candidate(con, cfg, by_uncertainty)
            if row is None:
                leased = con.execute("SELECT COUNT(*) FROM leases").fetchone()[0]
                return self._none(
                    "all remaining scans are leased" if leased else "no scan has un-annotated usable slices left",
                    client_id,
                )
            entry = PlanEntry.from_json(json.loads(row["entry"]))
            annotated = annotated_of(row)
            needs_scores = by_uncertainty or cfg.selection in CLASS_SELECTIONS
            avail, basis = volume_capacity(entry, cfg, annotated)
            got = volume_assignments(
                entry,
                cfg,
                min(cfg.quota(basis), avail, remaining),
                annotated=annotated,
                visit=int(row["visits"]),
                scores=self.catalog.scores(con, entry.id) if needs_scores else None,
                assigned_to=client_id,
                assigned_at=_iso(t),
            )
            lease = Lease(
                entry.id,
                client_id,
                got,
                _iso(t),
                _iso(t + timedelta(minutes=float(get_json(con, "settings", "strategy")["lease_minutes"]))),
            )
            con.execute(
                "INSERT INTO leases (image, client_id, assignments, n_slices, issued_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    lease.image,
                    client_id,
                    json.dumps([a.to_json() for a in got]),
                    lease.n_slices,
                    lease.issued_at,
                    lease.expires_at,
                ),
            )
            parts = json.dumps([a.to_json() for a in got], sort_keys=True)
            con.execute(
                "INSERT INTO last_assignments (image, client_id, parts, strategy, submitted) "
                "VALUES (?, ?, ?, ?, 0) ON CONFLICT (image, client_id) DO UPDATE SET parts = excluded.parts, "
                "strategy = excluded.strategy, submitted = 0",
                (entry.id, client_id, parts, strategy),
            )
            detail = {"strategy": strategy, "slices": lease.n_slices, "device": device}
            audit(con, client_id, "assign", entry.id, detail)
        self.last_reason = None
        return Granted(entry.id, [replace(a) for a in got], lease)

    def _none(self, reason: str, client_id: str) -> None:
        self.last_reason = reason
        log.info("next sample for %s: none (%s)", client_id, reason)
        return None

    # ------------------------------------------------------------------ submissions
    def assignments_for(self, image_id: str, client_id: str | None = None) -> list[SliceAssignment] | None:
        """The assignment a submission for ``image_id`` is checked against (see :meth:`assignment_of`)."""
        return self.assignment_of(image_id, client_id)[0]

    def assignment_of(
        self, image_id: str, client_id: str | None = None
    ) -> tuple[list[SliceAssignment] | None, str | None]:
        """(assignment, the client it was handed to) for a submission of ``image_id`` by ``client_id``.

        The submitter's open lease, else the last assignment handed to the submitter and not yet submitted
        (a late submission after the lease expired, even if the scan was handed to someone else since: it is
        judged against what the submitter was given, not against the newer assignment), else — for a
        submitter the server cannot tell (no client id) — the open lease on the image."""
        return self._match(self.db.read(), image_id, client_id)

    @staticmethod
    def _match(
        con: sqlite3.Connection, image_id: str, client_id: str | None
    ) -> tuple[list[SliceAssignment] | None, str | None]:
        if client_id:
            own = con.execute(
                "SELECT * FROM leases WHERE image = ? AND client_id = ?", (image_id, client_id)
            ).fetchone()
            if own is not None:
                return list(_lease(own).assignments), client_id
        last = con.execute(
            "SELECT parts FROM last_assignments WHERE image = ? AND client_id = ? AND submitted = 0",
            (image_id, client_id or ""),
        ).fetchone()
        if last is not None:
            return [SliceAssignment.from_json(x) for x in json.loads(last[0])], client_id or ""
        if client_id in (None, "", ANONYMOUS):
            any_ = con.execute("SELECT * FROM leases WHERE image = ?", (image_id,)).fetchone()
            if any_ is not None:
                return list(_lease(any_).assignments), any_["client_id"]
        return None, None

    def last_granted_to(self, image_id: str) -> str | None:
        """Who was handed ``image_id`` last (the audit trail): whose assignment the datastore's ``original``
        label shows."""
        row = self.db.read().execute(
            "SELECT actor FROM audit WHERE action = 'assign' AND target = ? ORDER BY id DESC LIMIT 1", (image_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def images_with_spent_slices(self) -> list[str]:
        """Images with slices in the budget ledger."""
        return [str(r[0]) for r in self.db.read().execute("SELECT DISTINCT image FROM ledger")]

    def submission_count(self, image_id: str) -> int:
        """Accepted submissions ever recorded for the image (deleted labels' included)."""
        row = self.db.read().execute("SELECT COUNT(*) FROM submissions WHERE image = ?", (image_id,)).fetchone()
        return int(row[0])

    def on_accepted(self, image_id: str, result: SubmissionResult, client_id: str, summary: dict) -> dict[str, Any]:
        """Record an accepted submission: submission row, slices in the budget ledger, lease closed, round
        counted — one transaction, after the label file is durable."""
        raw = summary.get("raw_submission")
        with self.db.transaction() as con:
            cur = con.execute(
                "INSERT INTO submissions (image, client_id, saved_at, mode, raw_path, sha256, slices_accepted, "
                "summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    image_id,
                    client_id,
                    summary.get("saved_at", _iso(datetime.now(timezone.utc))),
                    result.mode,
                    raw,
                    summary.get("raw_sha256"),
                    int(summary.get("slices_accepted", 0)),
                    json.dumps({k: summary[k] for k in SUMMARY_KEYS if k in summary}),
                ),
            )
            row = con.execute("SELECT annotated, rounds FROM scans WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                con.execute("INSERT INTO scans (id) VALUES (?)", (image_id,))
                row = con.execute("SELECT annotated, rounds FROM scans WHERE id = ?", (image_id,)).fetchone()
            if result.mode == "assignment":
                self._record_slices(con, image_id, result, client_id, annotated_of(row), cur.lastrowid)
            con.execute("UPDATE scans SET rounds = rounds + 1 WHERE id = ?", (image_id,))
            add_counter(con, "labels_saved")
            add_counter(con, "labels_since_train")
            audit(
                con,
                client_id,
                "label.accepted",
                image_id,
                {"mode": result.mode, "slices": int(summary.get("slices_accepted", 0)), "raw": raw,
                 "device": summary.get("device_id")},
            )
            return {"round": int(row["rounds"]) + 1}

    def _record_slices(
        self,
        con: sqlite3.Connection,
        image_id: str,
        result: SubmissionResult,
        client_id: str,
        annotated: dict[str, list[int]],
        submission_id: int | None,
    ) -> None:
        """Slices into the ledger and the scan's progress; the submitter's lease closes and another
        annotator's lease on this scan drops the slices just done (``incremental.record_submission``)."""
        _, holder = self._match(con, image_id, client_id)
        for part in result.accepted:
            axis = part["axis"]
            annotated[axis] = sorted(set(annotated.get(axis, [])) | {int(i) for i in part["indices"]})
            con.executemany(
                "INSERT OR IGNORE INTO ledger (image, axis, idx, submission_id) VALUES (?, ?, ?, ?)",
                [(image_id, axis, int(i), submission_id) for i in part["indices"]],
            )
        con.execute(
            "UPDATE scans SET annotated = ?, visits = visits + 1 WHERE id = ?",
            (json.dumps(annotated, sort_keys=True), image_id),
        )
        add_counter(con, "visits")
        if holder == client_id:
            con.execute("DELETE FROM leases WHERE image = ? AND client_id = ?", (image_id, client_id))
        else:
            con.execute("DELETE FROM leases WHERE image = ?", (image_id,))
        for other in con.execute("SELECT * FROM leases WHERE image = ?", (image_id,)).fetchall():
            self._trim_lease(con, _lease(other), annotated)
        con.execute(
            "UPDATE last_assignments SET submitted = 1 WHERE image = ? AND client_id = ?", (image_id, client_id)
        )
        cfg = self.catalog.plan_cfg(con)
        if cfg is not None:
            self.catalog.replan_scan(con, image_id, cfg)

    @staticmethod
    def _trim_lease(con: sqlite3.Connection, lease: Lease, annotated: Mapping[str, list[int]]) -> None:
        kept = without_annotated(lease, annotated)
        if kept is None:
            con.execute("DELETE FROM leases WHERE image = ? AND client_id = ?", (lease.image, lease.client_id))
            return
        con.execute(
            "UPDATE leases SET assignments = ?, n_slices = ? WHERE image = ? AND client_id = ?",
            (json.dumps([a.to_json() for a in kept.assignments]), kept.n_slices, lease.image, lease.client_id),
        )
