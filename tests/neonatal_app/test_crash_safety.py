"""kill -9 mid-flight loses nothing acknowledged.

12 annotators (threads with the Slicer plugin's ``MONAILabelClient``) ask for the next sample, paint
the assigned slices from the dense label and save, against a real server subprocess; the server is
SIGKILLed while they are at it and restarted. Every save the server acknowledged (HTTP 200) must be in
the stored label, exactly as painted; the database must pass ``PRAGMA integrity_check``; the budget
ledger must equal the slices of the recorded submissions.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
from monailabel.client import MONAILabelClient

from apps.studies import servable_studies
from strategies.annotate.state import open_state
from strategies.annotate.submission import paint_like_slicer
from strategies.plan.assignment import SliceAssignment
from training.data.dataset import open_dataset
from training.data.labels import IGNORE
from training.data.nifti import load_volume, save_volume
from training.data.synthetic.write import write_study_set

N_ANNOTATORS = 12
KILL_AFTER_ACKS = 16


def _annotate(url, client_id, dense, tmp_path, acks, lock, stop):
    client = MONAILabelClient(url, client_id=client_id)
    n = 0
    while not stop.is_set():
        try:
            a = client.next_sample("budget", {})
            if not a.get("id"):
                return
            asg = [SliceAssignment.from_json(x) for x in a["assignment"]]
            path = tmp_path / f"{client_id}-{n}.nii.gz"
            save_volume(path, paint_like_slicer(dense[a["id"]].data, asg), dense[a["id"]].affine, np.uint8)
            n += 1
            client.save_label(a["id"], str(path), params={"client_id": client_id})
        except Exception:  # noqa: BLE001 - the server is killed under the client on purpose
            return
        with lock:
            acks.append((a["id"], [x.to_json() for x in asg]))


def test_sigkill_loses_no_acknowledged_save(serve_process, tmp_path):
    root = tmp_path / "dhcp"
    write_study_set(root, subjects=16, shape=(20, 24, 24), spacing=5.0, seed=3)
    studies = servable_studies(root)
    dense = {s.id: load_volume(s.label) for s in open_dataset(root).subjects}
    conf = {"budget_total_slices": "100000", "budget_dispersion": "0.25", "lease_minutes": "1"}
    acks: list = []
    lock, stop = threading.Lock(), threading.Event()
    with serve_process(studies, conf, tmp_path) as (url, proc):
        threads = [threading.Thread(target=_annotate, args=(url, f"ann-{k}", dense, tmp_path, acks, lock, stop))
                   for k in range(N_ANNOTATORS)]
        for t in threads:
            t.start()
        t0 = time.time()
        while len(acks) < KILL_AFTER_ACKS and time.time() - t0 < 120:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # mid-flight: other annotators are between next sample and save
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acks) >= KILL_AFTER_ACKS

    with serve_process(studies, conf, tmp_path) as (url, _proc):  # restart: the server opens what it left
        spent = MONAILabelClient(url).info()["budget"]["spent_slices"]
    db = open_state(studies)
    assert db.integrity_check() == "ok"
    for image_id, parts in acks:  # every acknowledged save is stored, exactly as painted
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        for x in parts:
            take: list = [slice(None)] * 3
            take[x["voxel_axis"]] = x["indices"]
            np.testing.assert_array_equal(stored[tuple(take)], dense[image_id].data[tuple(take)])
    con = db.read()
    ledger = {(r["image"], r["axis"], r["idx"]) for r in con.execute("SELECT image, axis, idx FROM ledger")}
    submitted = {}
    for r in con.execute("SELECT image, summary FROM submissions"):
        for x in json.loads(r["summary"])["accepted"]:
            for i in x["indices"]:
                submitted[(r["image"], x["axis"], int(i))] = x["voxel_axis"]
    assert ledger == set(submitted) and spent == len(ledger)
    acknowledged = {(i, x["axis"], int(j)) for i, parts in acks for x in parts for j in x["indices"]}
    assert acknowledged <= ledger
    for (image_id, _axis, idx), v in submitted.items():  # the label holds every slice the ledger counts
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        take: list = [slice(None)] * 3
        take[v] = idx
        assert not np.any(stored[tuple(take)] == IGNORE)
