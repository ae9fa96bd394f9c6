"""Per-scan planner data kept in the annotation database, so Next Sample does no per-scan work.

A scan's brain extents are computed once, when the scan is first seen (from its ``brain_mask``
label, else from the head mask of the image) and again only when the served model gives better
ones (``set_model_outputs``). For the budget in force the table also holds each scan's place in
the planner's order (``rank``), the slices it still has (``avail``) and the uncertainty it still
holds (``uncertainty``): recomputed for one scan when it is annotated or scored, for all scans only
when an admin changes the budget's axis, margin, dispersion or seed. Next Sample is then one
indexed query (:meth:`ScanCatalog.next_candidate`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from strategies.annotate.db import AnnotationDB, get_json, put_json
from strategies.plan.budget import BudgetConfig, volume_capacity, volume_uncertainty
from strategies.plan.extents import ExtentCache, PlanEntry, entry_from_arrays
from strategies.plan.selection import scan_order
from training.data.head import head_mask
from training.data.nifti import load_volume, read_header

log = logging.getLogger(__name__)

Scores = Mapping[str, np.ndarray]
UNREADABLE = "unreadable"  # scans.source of a scan whose files could not be read (stamp: those files' stamps)


def plan_key(cfg: BudgetConfig) -> str:
    """What the per-scan plan columns depend on (the selection does not change rank or capacity)."""
    d = {
        "axis": cfg.axis,
        "margin": cfg.margin,
        "dispersion": cfg.dispersion,
        "seed": cfg.seed,
        "stratify": cfg.stratify_by_age,
    }
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def file_stamp(path: str | Path) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _stamp_or_none(path: str | Path) -> str | None:
    try:
        return file_stamp(path)
    except OSError:
        return None


def _pack(scores: Scores) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in scores.items()})
    return buf.getvalue()


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def label_file(studies: str | Path, tag: str) -> Callable[[str], str | None]:
    """``image id → its label file of that tag`` in a MONAI Label studies folder (``labels/<tag>/<id>.nii[.gz]``)."""
    folder = Path(studies) / "labels" / tag

    def find(image_id: str) -> str | None:
        for ext in (".nii.gz", ".nii"):
            p = folder / f"{image_id}{ext}"
            if p.is_file():
                return str(p)
        return None

    return find


def annotated_of(row: sqlite3.Row) -> dict[str, list[int]]:
    return json.loads(row["annotated"] or "{}")


class ScanCatalog:
    """The ``scans`` table: which scans exist, their brain extents, and their plan columns."""

    def __init__(
        self,
        db: AnnotationDB,
        cache_dir: str | Path,
        brain_mask_of: Callable[[str], str | None] = lambda _id: None,
        scores_of: Callable[[str], Scores | None] = lambda _id: None,
    ) -> None:
        self.db = db
        self._extents = ExtentCache(Path(cache_dir) / "plan_extents.json")
        self._brain_mask_of = brain_mask_of
        self._known: set[str] | None = None
        self._unreadable: dict[str, str] = {}
        self._masked: bool | None = None

    # ------------------------------------------------------------------ scans
    def _entry_for(self, image_id: str, image: str) -> tuple[PlanEntry, str]:
        mask = self._brain_mask_of(image_id)
        if mask is not None:
            shape, slices, _ = self._extents.brain_slices(mask, "mask")
            _, affine = read_header(image)
            return PlanEntry(image_id, shape, affine, slices), "mask"
        vol = load_volume(image)
        return entry_from_arrays(image_id, vol.affine, mask=head_mask(vol.data, vol.spacing)), "head"

    def _load_known(self) -> None:
        if self._known is None:
            con = self.db.read()
            self._known = {r[0] for r in con.execute("SELECT id FROM scans WHERE entry IS NOT NULL")}
            self._unreadable = {
                r[0]: r[1] for r in con.execute("SELECT id, stamp FROM scans WHERE entry IS NULL AND source = ?",
                                                (UNREADABLE,))
            }

    def _inputs_stamp(self, image_id: str, image: str) -> str:
        """What a failed read depends on: the stamps of the image file and of its brain mask, if any."""
        mask = self._brain_mask_of(image_id)
        return "|".join(str(_stamp_or_none(p)) for p in (image, mask) if p is not None)

    def _still_unreadable(self, image_id: str, image_uri: Callable[[str], str]) -> bool:
        failed = self._unreadable.get(image_id)
        return failed is not None and failed == self._inputs_stamp(image_id, image_uri(image_id))

    def sync(self, image_ids: Iterable[str], image_uri: Callable[[str], str]) -> int:
        """Add the scans not yet in the table, drop the ones gone; the number added. Only new scans are
        read, so a request pays nothing when the study set did not change. A scan that cannot be read is
        recorded with its files' size and mtime and read again only once they change (not at every request)."""
        self._load_known()
        ids = set(image_ids)
        new = {i for i in ids - self._known if not self._still_unreadable(i, image_uri)}
        gone = self._known - ids
        if not new and not gone:
            return 0
        rows, failed = [], []
        for image_id in sorted(new):
            image = image_uri(image_id)
            before = self._inputs_stamp(image_id, image)  # a file still being copied changes during the read
            try:
                entry, source = self._entry_for(image_id, image)
                stamp = file_stamp(image)
            except (OSError, ValueError) as exc:
                if self._inputs_stamp(image_id, image) == before:
                    log.warning("cannot plan %s: %s (not read again until its file changes)", image_id, exc)
                    failed.append((image_id, str(image), before, UNREADABLE))
                else:
                    log.warning("cannot plan %s yet: %s (its files changed during the read)", image_id, exc)
                continue
            rows.append(
                (image_id, str(image), stamp, source, json.dumps(entry.to_json()), int(entry.has_brain), entry.scan_age)
            )
        with self.db.transaction() as con:
            con.executemany(
                "INSERT INTO scans (id, image, stamp, source, entry, has_brain, scan_age) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET image = excluded.image, stamp = excluded.stamp, "
                "source = excluded.source, entry = excluded.entry, has_brain = excluded.has_brain, "
                "scan_age = excluded.scan_age, plan_key = NULL",
                rows,
            )
            con.executemany(
                "INSERT INTO scans (id, image, stamp, source) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "image = excluded.image, stamp = excluded.stamp, source = excluded.source, entry = NULL, "
                "has_brain = 0, plan_key = NULL",
                failed,
            )
            if gone:
                con.executemany(
                    "UPDATE scans SET entry = NULL, has_brain = 0, plan_key = NULL WHERE id = ?", [(i,) for i in gone]
                )
            if rows or gone:
                put_json(con, "settings", "plan_order", None)  # the order spans the scan set: recompute it
        self._extents.save()
        self._known = (self._known - gone) | {r[0] for r in rows}
        self._unreadable.update({f[0]: f[2] for f in failed})
        for r in rows:
            self._unreadable.pop(r[0], None)
        self._masked = None
        return len(rows)

    def forget(self, image_id: str) -> None:
        """The in-memory view of a scan removed from the study set (the table row is cleared by the caller)."""
        if self._known is not None:
            self._known.discard(image_id)

    def all_have_brain_masks(self) -> bool:
        """Then planning needs no model label (background model outputs are needed for uncertainty only)."""
        if self._masked is None:
            row = self.db.read().execute("SELECT COUNT(*) FROM scans WHERE entry IS NOT NULL AND source != 'mask'")
            self._masked = row.fetchone()[0] == 0
        return self._masked

    def has_scores(self, cfg: BudgetConfig) -> bool:
        row = self.db.read().execute(
            "SELECT 1 FROM scans WHERE plan_key = ? AND uncertainty IS NOT NULL LIMIT 1", (plan_key(cfg),)
        )
        return row.fetchone() is not None

    def entry(self, con: sqlite3.Connection, image_id: str) -> PlanEntry | None:
        row = con.execute("SELECT entry FROM scans WHERE id = ?", (image_id,)).fetchone()
        return None if row is None or row[0] is None else PlanEntry.from_json(json.loads(row[0]))

    def set_model_outputs(self, image_id: str, version: str, entry: PlanEntry | None, scores: Scores | None) -> None:
        """A model processed a scan: its brain extents (unless a brain mask gives them) and its uncertainty."""
        with self.db.transaction() as con:
            row = con.execute("SELECT source, has_brain, plan_key FROM scans WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return
            if scores is not None:
                con.execute("UPDATE scans SET scores = ? WHERE id = ?", (_pack(scores), image_id))
            if entry is not None and entry.has_brain and row["source"] != "mask":
                con.execute(
                    "UPDATE scans SET entry = ?, source = 'model', has_brain = 1, model_version = ? WHERE id = ?",
                    (json.dumps(entry.to_json()), version, image_id),
                )
                if not row["has_brain"]:
                    put_json(con, "settings", "plan_order", None)  # a scan joins the planner's order
            cfg = self.plan_cfg(con)
            if cfg is not None and row["plan_key"] == plan_key(cfg):
                self.replan_scan(con, image_id, cfg, scores)

    # ------------------------------------------------------------------ plan columns
    @staticmethod
    def plan_cfg(con: sqlite3.Connection) -> BudgetConfig | None:
        raw = get_json(con, "settings", "plan_cfg")
        return None if raw is None else BudgetConfig.from_json(raw)

    def replan_scan(
        self, con: sqlite3.Connection, image_id: str, cfg: BudgetConfig, scores: Scores | None = None
    ) -> None:
        """Slices left and uncertainty left of one scan under ``cfg`` (after a submission or a model's scores)."""
        row = con.execute("SELECT entry, annotated FROM scans WHERE id = ?", (image_id,)).fetchone()
        if row is None or row["entry"] is None:
            return
        entry = PlanEntry.from_json(json.loads(row["entry"]))
        annotated = annotated_of(row)
        avail, basis = volume_capacity(entry, cfg, annotated)
        s = scores if scores is not None else self.scores(con, image_id)
        u = volume_uncertainty(entry, cfg, s, cfg.quota(basis), annotated) if s is not None and avail > 0 else None
        con.execute(
            "UPDATE scans SET avail = ?, uncertainty = ?, plan_key = ? WHERE id = ?",
            (int(avail), u, plan_key(cfg), image_id),
        )

    def ensure_plan(self, cfg: BudgetConfig) -> None:
        """Bring the plan columns to ``cfg``: nothing to do unless the budget or the scan set changed."""
        key = plan_key(cfg)
        if get_json(self.db.read(), "settings", "plan_order") == key:
            return  # per-scan changes keep the columns current (replan_scan); only the order is global
        with self.db.transaction() as con:
            rows = con.execute("SELECT id, scan_age, has_brain, plan_key FROM scans WHERE entry IS NOT NULL").fetchall()
            brain = [r for r in rows if r["has_brain"]]
            ages = [r["scan_age"] if cfg.stratify_by_age else None for r in brain]
            order = scan_order([r["id"] for r in brain], ages, cfg.seed)
            con.executemany("UPDATE scans SET rank = ? WHERE id = ?", [(i, sid) for i, sid in enumerate(order)])
            for r in rows:
                if r["plan_key"] != key:
                    self.replan_scan(con, r["id"], cfg)
            put_json(con, "settings", "plan_order", key)
            put_json(con, "settings", "plan_cfg", cfg.to_json())

    @staticmethod
    def next_candidate(con: sqlite3.Connection, cfg: BudgetConfig, by_uncertainty: bool) -> sqlite3.Row | None:
        """The next scan in the planner's order that has slices left and no open lease (one indexed query).

        Fewest visits first, then the planner's order; by uncertainty: the most uncertainty left first,
        scans without scores after, in the planner's order. A scan not yet in the order (no ``rank``: its brain
        was found by a model after the order was computed) comes after the ranked ones, not before them."""
        order = "uncertainty DESC NULLS LAST, rank NULLS LAST" if by_uncertainty else "visits, rank NULLS LAST"
        return con.execute(
            "SELECT id, entry, annotated, visits FROM scans "  # noqa: S608 - ``order`` is one of two constants
            "WHERE plan_key = ? AND has_brain = 1 AND avail > 0 AND id NOT IN (SELECT image FROM leases) "
            f"ORDER BY {order} LIMIT 1",
            (plan_key(cfg),),
        ).fetchone()

    @staticmethod
    def scores(con: sqlite3.Connection, image_id: str) -> Scores | None:
        """The newest model's per-slice uncertainty of a scan (axis name → scores in voxel order)."""
        row = con.execute("SELECT scores FROM scans WHERE id = ?", (image_id,)).fetchone()
        return None if row is None or row[0] is None else _unpack(row[0])

    def ids(self) -> Iterable[str]:
        return [r[0] for r in self.db.read().execute("SELECT id FROM scans WHERE entry IS NOT NULL ORDER BY id")]
