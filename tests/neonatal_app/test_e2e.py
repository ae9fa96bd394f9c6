"""End to end against a real uvicorn server (``python -m apps.commands.serve``) with the Slicer plugin's client.

info → next_sample (assignment + ``original`` label) → save_label (assigned slices + stray paint) →
stored partial label has 255 exactly outside the assignment, raw submission kept → train (tiny
preset, 1 short epoch, MONAI Label's background subprocess) → model published → infer returns a
label of the image's shape → after every scan had its first visit, a second round on a scan merges
without losing round one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from training.data.labels import IGNORE
from training.data.nifti import load_volume, save_volume


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"server did not answer {url} within {timeout} s")


@pytest.fixture()
def server(server_env, free_port, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    port = free_port()
    # no PYTHONPATH: the installed `neolabel serve` must start MONAI Label's train subprocess without one
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **server_env, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "apps.commands.serve", "--studies", str(studies), "--port", str(port),
           "--conf", "preset", "tiny", "--conf", "budget_total_slices", "200", "--conf", "budget_dispersion", "0.2",
           "--conf", "epochs", "1"]
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - closed in the fixture's finally
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.stdout = log  # type: ignore[assignment]
    try:
        _wait_for(f"http://127.0.0.1:{port}/info/", proc)
        yield f"http://127.0.0.1:{port}", studies, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        text = log.read()
        if "Traceback" in text:
            print(text[-5000:])
        log.close()


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
