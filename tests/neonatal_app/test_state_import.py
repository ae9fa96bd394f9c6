"""A study set annotated with the JSON state of neolabel ≤ 0.1 keeps everything when the database arrives.

``data/legacy_state.json`` was written by neolabel at commit 4c26f7c (the last JSON-state release) on
the tiny synthetic study set of ``conftest.py``: an admin set the budget to 50 slices, alice
submitted her 7 axial slices of sub-SYN0001, bob holds a lease on sub-SYN0004.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from strategies.annotate.db import counter
from strategies.annotate.state import open_state

LEGACY = Path(__file__).parent / "data" / "legacy_state.json"


def test_legacy_json_state_is_imported_once(inprocess_app, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    (studies / ".neolabel").mkdir(exist_ok=True)
    shutil.copy(LEGACY, studies / ".neolabel" / "state.json")
    with inprocess_app(studies) as (client, _app):
        budget = client.get("/info/").json()["budget"]
        assert budget["total_slices"] == 50  # the admin's edit survived
        assert budget["spent_slices"] == 7 and budget["scans_touched"] == 1
        assert [(x["image"], x["client_id"]) for x in budget["open_leases"]] == [("sub-SYN0004_ses-1004", "bob")]
        again = client.post("/activelearning/budget", json={"client_id": "bob"}).json()
        assert again["id"] == "sub-SYN0004_ses-1004"  # bob gets his lease back
        carol = client.post("/activelearning/budget", json={"client_id": "carol"}).json()
        assert carol["id"] not in ("sub-SYN0001_ses-1001", "sub-SYN0004_ses-1004")
    assert not (studies / ".neolabel" / "state.json").exists()
    assert (studies / ".neolabel" / "state.json.imported").is_file()
    db = open_state(studies)
    con = db.read()
    rows = con.execute("SELECT image, client_id, mode, slices_accepted FROM submissions").fetchall()
    assert [tuple(r) for r in rows] == [("sub-SYN0001_ses-1001", "alice", "assignment", 7)]
    ledger = con.execute("SELECT axis, idx FROM ledger WHERE image = 'sub-SYN0001_ses-1001' ORDER BY idx").fetchall()
    assert [tuple(r) for r in ledger] == [("axial", i) for i in (11, 14, 17, 21, 24, 27, 30)]
    assert counter(con, "labels_saved") == 1
    # a second start imports nothing again (the JSON is gone; a copy put back is ignored)
    shutil.copy(LEGACY, studies / ".neolabel" / "state.json")
    open_state(studies)
    assert counter(db.read(), "labels_saved") == 1
    assert db.integrity_check() == "ok"
