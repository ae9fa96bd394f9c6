"""/info, /activelearning (budget, uncertainty, foreground_random), leases, persisted settings, /infer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data.nifti import load_volume, save_volume


@pytest.fixture()
def studies(served_copy, synth_root, tmp_path):
    return served_copy(synth_root, tmp_path)


def _brain_slices(synth_root, image_id, voxel_axis):
    from training.data.dataset import open_dataset

    mask = load_volume(open_dataset(synth_root).get(image_id).brain_mask).data != 0
    other = tuple(a for a in range(3) if a != voxel_axis)
    return set(np.flatnonzero(mask.any(axis=other)).tolist())


def test_info_strategies_leases_and_persisted_settings(inprocess_app, studies, synth_root, tmp_path):
    with inprocess_app(studies, {"budget_total_slices": "60", "lease_minutes": "30"}) as (client, _app):
        info = client.get("/info/").json()
        assert "config" not in info
        # classes 1–9 in value order (the Slicer plugin numbers segments 1, 2, … in this order; 0 = unpainted)
        assert info["labels"] == {c["key"]: c["value"] for c in info["class_table"] if 0 < c["value"] < 255}
        assert list(info["labels"].values()) == list(range(1, 10))
        assert info["label_colors"]["csf"] == pytest.approx([120 / 255, 18 / 255, 134 / 255], abs=1e-3)
        assert info["models"] == {} and "segmentation" in info["trainers"]
        cfg = info["strategies"]["budget"]["config"]
        assert cfg["budget_total_slices"] == 60 and cfg["budget_axis"][0] == "axial"
        assert info["budget"]["scans_total"] == 6 and info["budget"]["remaining_slices"] == 60

        a1 = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        again = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        assert again["id"] == a1["id"] and again["slices"] == a1["slices"]  # the lease holder gets the same work
        b1 = client.post("/activelearning/foreground_random", json={"client_id": "bob"}).json()
        c1 = client.post("/activelearning/uncertainty", json={"client_id": "carol"}).json()
        assert len({a1["id"], b1["id"], c1["id"]}) == 3  # leased scans are never handed to someone else
        for ans in (a1, b1, c1):  # every strategy assigns brain slices only
            s = ans["slices"][0]
            assert set(s["indices"]) <= _brain_slices(synth_root, ans["id"], s["voxel_axis"])
        budget = client.get("/info/").json()["budget"]
        leased = sum(len(x["slices"][0]["indices"]) for x in (a1, b1, c1))
        assert budget["leased_slices"] == leased and budget["remaining_slices"] == 60 - leased
        assert len(budget["open_leases"]) == 3

        # the admin edits the budget strategy (Slicer options table sends the config back with the request)
        r = client.post("/activelearning/budget", json={"client_id": "dave", "budget_dispersion": "0.5",
                                                        "budget_axis": ["coronal", "axial"]})
        assert r.status_code == 200
        bad = client.post("/activelearning/budget", json={"client_id": "erin", "budget_dispersion": "7"})
        assert bad.status_code == 400 and "budget_dispersion" in bad.json()["detail"]

    # restart: the edited setting persists; a key given with --conf overrides the stored value
    with inprocess_app(studies, {"budget_total_slices": "60"}) as (client, _app):
        s = client.get("/info/").json()["strategy_settings"]
        assert s["budget_dispersion"] == 0.5 and s["lease_minutes"] == 30.0
        assert len(client.get("/info/").json()["budget"]["open_leases"]) == 4  # leases survive a restart
    with inprocess_app(studies, {"budget_dispersion": "0.25"}) as (client, _app):
        s = client.get("/info/").json()["strategy_settings"]
        assert s["budget_dispersion"] == 0.25 and s["budget_total_slices"] == 60
        edit = client.post("/activelearning/budget", json={"client_id": "dave", "budget_dispersion": "0.4"})
        assert edit.status_code == 200
    # the same --conf again (as in MONAI Label's training subprocess) does not undo the admin's edit
    with inprocess_app(studies, {"budget_dispersion": "0.25"}) as (client, _app):
        assert client.get("/info/").json()["strategy_settings"]["budget_dispersion"] == 0.4


def test_budget_runs_out_and_says_so(inprocess_app, studies, synth_root, tmp_path):
    with inprocess_app(studies, {"budget_total_slices": "3", "budget_dispersion": "1.0"}) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        assert sum(len(s["indices"]) for s in a["slices"]) == 3
        assert client.post("/activelearning/budget", json={"client_id": "bob"}).json() == {}
        assert "budget" in client.get("/info/").json()["budget"]["last_reason"]


def test_model_appears_when_published_and_drives_infer_and_uncertainty(make_model, assigned_mask, inprocess_app,
        oracle, painted, studies, synth_root, tmp_path):
    from neonatal_app.lib.configs.segmentation import model_path

    with inprocess_app(studies) as (client, _app):
        ids = sorted(client.get("/datastore/?output=all").json()["objects"])
        r = client.post(f"/infer/segmentation?image={ids[0]}")
        assert r.status_code == 409 and "no model" in r.json()["detail"]
        make_model(model_path(studies))  # a training publishes like this (os.replace)
        info = client.get("/info/").json()
        assert "segmentation" in info["models"]
        r = client.post(f"/infer/segmentation?image={ids[0]}&output=image")
        assert r.status_code == 200
        out = tmp_path / "pred.nii.gz"
        out.write_bytes(r.content)
        pred, ref = load_volume(out), oracle(synth_root, ids[0])
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
        r = client.post("/infer/segmentation?image=sub-NOPE_ses-1")
        assert r.status_code == 404
        outside = tmp_path / "elsewhere.nii.gz"  # an existing file outside the study set is not served
        save_volume(outside, np.ones((8, 8, 8), np.float32), np.eye(4))
        assert client.post(f"/infer/segmentation?image={outside}").status_code == 404

        # with a model the uncertainty strategy ranks by entropy and the original label is the pre-segmentation
        u = client.post("/activelearning/uncertainty", json={"client_id": "ulla"}).json()
        assert u["original_label"] == "pre-segmentation"
        service = _app.service
        assert service.outputs.wait(60) and service.outputs.pending() == []  # scored in the background
        con = service.catalog.db.read()  # what Next Sample ranks by: every planned scan's scores in the catalog
        scored = {e.id for e in service.entries() if service.catalog.scores(con, e.id) is not None}
        assert scored and scored == {e.id for e in service.entries()}
        orig = load_volume(studies / "labels" / "original" / f"{u['id']}.nii.gz").data
        assert not orig[~assigned_mask(orig.shape, u["slices"])].any()

        # a newer model file is picked up without restart (mtime change)
        from training.infer.predictor import Predictor  # noqa: F401 - loaded by the infer task

        task = _app._infers["segmentation"]
        p1 = task.predictor()
        import os
        import time

        time.sleep(0.01)
        make_model(model_path(studies))
        os.utime(model_path(studies), None)
        assert task.predictor() is not p1

        # the answer of a save carries the summary, the label keeps the partial form
        ref = oracle(synth_root, u["id"])
        p = tmp_path / "u.nii.gz"
        save_volume(p, painted(ref, u["slices"]), ref.affine, np.uint8)
        r = client.put(f"/datastore/label?image={u['id']}", files={"label": ("u.nii.gz", p.read_bytes())},
                       data={"params": json.dumps({"client_id": "ulla"})})
        assert r.status_code == 200 and r.json()["round"] == 1
