"""End to end against a real uvicorn server (``python -m apps.commands.serve``) with the Slicer plugin's client.

info → next_sample (assignment + ``original`` label) → save_label (assigned slices + stray paint) →
stored partial label has 255 exactly outside the assignment, raw submission kept → train (tiny
preset, 1 short epoch, MONAI Label's background subprocess) → model published → infer returns a
label of the image's shape → after every scan had its first visit, a second round on a scan merges
without losing round one.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from training.data.labels import IGNORE
from training.data.nifti import load_volume, save_volume


@pytest.fixture()
def server(serve_process, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    conf = {"preset": "tiny", "budget_total_slices": "200", "budget_dispersion": "0.2", "epochs": "1"}
    with serve_process(studies, conf, tmp_path) as (url, proc):
        yield url, studies, proc


def _submit(painted, client, image_id, slices, ref, tmp_path, name):
    path = tmp_path / f"{name}.nii.gz"
    save_volume(path, painted(ref, slices), ref.affine, np.uint8)
    return client.save_label(image_id, str(path), params={"label_info": []})


def test_full_round_trip(assigned_mask, oracle, painted, server, synth_root, tmp_path):
    from monailabel.client import MONAILabelClient

    url, studies, _ = server
    alice = MONAILabelClient(url, tmpdir=str(tmp_path), client_id="alice")

    info = alice.info()
    assert "config" not in info  # the Slicer plugin refuses a server whose /info has a top-level "config"
    assert info["labels"]["white_matter"] == 3 and "white_matter" in info["label_colors"]
    assert set(info["strategies"]) == {"budget", "uncertainty", "foreground_random"}
    assert "budget_dispersion" in info["strategies"]["budget"]["config"]
    assert info["models"] == {}  # no weights yet: the model is not offered
    assert info["budget"]["total_slices"] == 200 and info["budget"]["spent_slices"] == 0

    # ---- round one on the first scan
    a = alice.next_sample("budget", {})
    image_id, slices = a["id"], a["slices"]
    assert slices and slices[0]["axis"] in ("sagittal", "coronal", "axial") and slices[0]["indices"]
    assert "instruction" in a and image_id in a["instruction"]
    original = load_volume(alice.download_label(image_id, "original"))
    mask = assigned_mask(original.shape, slices)
    assert not original.data[~mask].any()  # nothing outside the assigned slices
    assert original.data[mask].any()  # the assignment is visible

    ref = oracle(synth_root, image_id)
    res = _submit(painted, alice, image_id, slices, ref, tmp_path, "r1")
    assert res["slices_accepted"] == sum(len(s["indices"]) for s in slices)
    assert res["ignored_voxels_outside_assignment"] > 0
    stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
    assert np.all(stored[~mask] == IGNORE) and np.array_equal(stored[mask], ref.data[mask])
    raw = list((studies / ".neolabel" / "submissions" / image_id).glob("*.nii.gz"))
    assert len(raw) == 1
    assert np.array_equal(load_volume(raw[0]).data, painted(ref, slices))  # kept verbatim

    # ---- training in MONAI Label's background process, then the model is offered and infers
    started = alice.train_start("segmentation", {"epochs": 1, "iterations_per_epoch": 3})
    assert started.get("status") in ("SUBMITTED", "RUNNING", "DONE")
    t0 = time.time()
    while True:
        st = alice.train_status()
        if st.get("status") in ("DONE", "ERROR"):
            break
        assert time.time() - t0 < 180, "training did not finish"
        time.sleep(1)
    assert st["status"] == "DONE", st.get("details")
    info = alice.info()
    assert "segmentation" in info["models"]
    assert info["train_stats"]["segmentation"]["published"] is True
    out, params = alice.infer("segmentation", image_id, {})
    pred = load_volume(out)
    assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    assert set(np.unique(pred.data)) <= set(range(10))

    # ---- visit every other scan once, then a second round on a visited scan merges with round one
    n_images = len(info["budget"]["open_leases"]) + info["budget"]["scans_total"]
    seen = {image_id: stored}
    second = None
    for _ in range(n_images + 2):
        b = alice.next_sample("budget", {})
        assert b.get("id"), "budget ran out before the second round"
        ref_b = oracle(synth_root, b["id"])
        _submit(painted, alice, b["id"], b["slices"], ref_b, tmp_path, f"{b['id']}-{b['round']}")
        if b["round"] >= 1:
            second = b
            break
        seen[b["id"]] = load_volume(studies / "labels" / "final" / f"{b['id']}.nii.gz").data
    assert second is not None
    merged = load_volume(studies / "labels" / "final" / f"{second['id']}.nii.gz").data
    first = seen[second["id"]]
    kept = first != IGNORE
    assert np.array_equal(merged[kept], first[kept])  # round one is not lost
    m2 = assigned_mask(merged.shape, second["slices"])
    assert np.array_equal(merged[m2], oracle(synth_root, second["id"]).data[m2])
    assert np.sum(merged != IGNORE) > np.sum(kept)
    assert len(list((studies / ".neolabel" / "submissions" / second["id"]).glob("*.nii.gz"))) == 2
