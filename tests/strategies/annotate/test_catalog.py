"""ScanCatalog: unreadable scans are not re-read at every request; Next Sample's order puts unranked scans last."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from strategies.annotate.catalog import ScanCatalog, plan_key
from strategies.annotate.state import open_state
from strategies.plan.budget import BudgetConfig
from strategies.plan.extents import PlanEntry, entry_from_arrays


@pytest.fixture
def db(tmp_path):
    return open_state(tmp_path / "studies")


def _counting(monkeypatch, catalog: ScanCatalog) -> list[str]:
    reads: list[str] = []
    entry_for = catalog._entry_for

    def counted(image_id, image):
        reads.append(image_id)
        return entry_for(image_id, image)

    monkeypatch.setattr(catalog, "_entry_for", counted)
    return reads


def test_an_unreadable_scan_is_read_again_only_when_its_file_changes(db, monkeypatch, synth_dataset, tmp_path):
    good = synth_dataset.get(synth_dataset.ids()[0])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not a NIfTI file")
    uris = {"good": str(good.image), "bad": str(broken)}
    catalog = ScanCatalog(db, tmp_path / "cache")
    reads = _counting(monkeypatch, catalog)

    assert catalog.sync(uris, uris.__getitem__) == 1
    assert sorted(reads) == ["bad", "good"]
    catalog.ensure_plan(BudgetConfig(total_slices=10))
    for _ in range(3):  # every Next Sample syncs: the broken file is not read again, the plan order is kept
        assert catalog.sync(uris, uris.__getitem__) == 0
    assert sorted(reads) == ["bad", "good"]
    assert json.loads(db.read().execute("SELECT value FROM settings WHERE key = 'plan_order'").fetchone()[0])

    restarted = ScanCatalog(db, tmp_path / "cache")  # the failure is recorded in the database, not only in memory
    reads_after_restart = _counting(monkeypatch, restarted)
    assert restarted.sync(uris, uris.__getitem__) == 0 and reads_after_restart == []

    shutil.copyfile(good.image, broken)  # the file is fixed: a new size and mtime, so it is read again
    assert restarted.sync(uris, uris.__getitem__) == 1
    assert reads_after_restart == ["bad"]
    assert "bad" in restarted.ids()


def test_a_scan_still_being_copied_is_not_recorded_unreadable(db, monkeypatch, synth_dataset, tmp_path):
    """The read fails on a half-copied file and the copy completes during it: the scan is read again next time."""
    good = synth_dataset.get(synth_dataset.ids()[0])
    copying = tmp_path / "copying.nii.gz"
    data = good.image.read_bytes()
    copying.write_bytes(data[: len(data) // 2])
    uris = {"new": str(copying)}
    catalog = ScanCatalog(db, tmp_path / "cache")
    entry_for = catalog._entry_for

    def read_while_the_copy_finishes(image_id, image):
        try:
            return entry_for(image_id, image)
        finally:
            copying.write_bytes(data)

    monkeypatch.setattr(catalog, "_entry_for", read_while_the_copy_finishes)
    assert catalog.sync(uris, uris.__getitem__) == 0  # the half file could not be read
    monkeypatch.setattr(catalog, "_entry_for", entry_for)
    assert catalog.sync(uris, uris.__getitem__) == 1 and "new" in catalog.ids()


def _entry(image_id: str, brain: bool) -> PlanEntry:
    mask = np.zeros((8, 8, 8), bool)
    if brain:
        mask[2:6, 2:6, 2:6] = True
    return entry_from_arrays(image_id, np.eye(4), mask=mask)


@pytest.mark.parametrize("by_uncertainty", [False, True])
def test_a_scan_outside_the_planners_order_comes_after_the_ranked_ones(db, tmp_path, by_uncertainty):
    """A scan whose brain a model finds after the order was computed has plan columns but no rank yet."""
    catalog = ScanCatalog(db, tmp_path / "cache")
    with db.transaction() as con:
        for e in (_entry("ranked", True), _entry("late", False)):
            con.execute("INSERT INTO scans (id, entry, has_brain, source) VALUES (?, ?, ?, 'head')",
                        (e.id, json.dumps(e.to_json()), int(e.has_brain)))
    cfg = BudgetConfig(total_slices=10, axis="axial")
    catalog.ensure_plan(cfg)
    catalog.set_model_outputs("late", "v1", _entry("late", True), None)  # the model finds its brain

    rows = {r["id"]: r for r in db.read().execute("SELECT id, rank, avail, plan_key, has_brain FROM scans")}
    assert rows["late"]["rank"] is None and rows["late"]["avail"] > 0 and rows["late"]["has_brain"] == 1
    assert rows["late"]["plan_key"] == rows["ranked"]["plan_key"] == plan_key(cfg)
    assert catalog.next_candidate(db.read(), cfg, by_uncertainty)["id"] == "ranked"
