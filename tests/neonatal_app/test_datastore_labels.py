"""PUT /datastore/label: every bad input is refused with a 4xx and a message and changes nothing on disk;
accepted saves become partial labels, keep the raw upload, and survive 20 concurrent saves."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading

import numpy as np
import pytest

from training.data.labels import IGNORE
from training.data.nifti import load_volume, save_volume


@pytest.fixture()
def studies(served_copy, synth_root, tmp_path):
    return served_copy(synth_root, tmp_path)


def _db_dump(studies):
    """Every row of the annotation database, as SQL (a refused or failed save must leave it as it was)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(studies / ".neolabel" / "annotation.db")) as con:
        return list(con.iterdump())


def _put(client, image_id, path_or_bytes, tag=None, name="label.nii.gz", params=None):
    body = path_or_bytes.read_bytes() if hasattr(path_or_bytes, "read_bytes") else path_or_bytes
    url = f"/datastore/label?image={image_id}" + (f"&tag={tag}" if tag else "")
    return client.put(url, files={"label": (name, body)}, data={"params": json.dumps(params or {"client_id": "alice"})})


def test_bad_inputs_are_refused_and_change_nothing(assigned_mask, inprocess_app, oracle, painted, snapshot, studies,
        synth_root, tmp_path):
    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, slices = a["id"], a["slices"]
        ref = oracle(synth_root, image_id)
        good = painted(ref, slices)

        def nifti(name, data, affine=ref.affine, dtype=np.uint8):
            p = tmp_path / name
            save_volume(p, data, affine, dtype=dtype)
            return p

        shifted = ref.affine.copy()
        shifted[:3, 3] += 5.0
        raw_gz = gzip.compress(b"this is not a NIfTI file" * 10)
        cases = [
            ("wrong shape", dict(image_id=image_id, path_or_bytes=nifti("s.nii.gz", good[:-1])), 400, "shape"),
            ("wrong affine", dict(image_id=image_id, path_or_bytes=nifti("a.nii.gz", good, shifted)), 400, "affine"),
            ("value 10", dict(image_id=image_id, path_or_bytes=nifti("v.nii.gz", np.where(good > 0, 10, 0))), 400,
             "outside the drawem9 classes"),
            ("value 254", dict(image_id=image_id, path_or_bytes=nifti("w.nii.gz", np.full(ref.shape, 254))), 400,
             "outside the drawem9 classes"),
            ("float values", dict(image_id=image_id, path_or_bytes=nifti("f.nii.gz", good + 0.5, dtype=np.float32)),
             400, "non-integer"),
            ("corrupt gzip", dict(image_id=image_id, path_or_bytes=b"\x1f\x8b garbage"), 400, "NIfTI"),
            ("not NIfTI", dict(image_id=image_id, path_or_bytes=raw_gz), 400, "NIfTI"),
            ("other format", dict(image_id=image_id, path_or_bytes=b"P5 1 1 255 x", name="label.png"), 415, "NIfTI"),
            ("unknown image", dict(image_id="sub-NOPE_ses-1", path_or_bytes=nifti("u.nii.gz", good)), 404,
             "unknown image"),
            ("traversal id", dict(image_id="..%2F..%2Fetc", path_or_bytes=nifti("t.nii.gz", good)), 400,
             "invalid image id"),
            ("traversal tag", dict(image_id=image_id, path_or_bytes=nifti("g.nii.gz", good), tag="..%2Ffinal"), 400,
             "invalid label tag"),
            ("server tag", dict(image_id=image_id, path_or_bytes=nifti("o.nii.gz", good), tag="original"), 400,
             "written by the server"),
            ("empty submission", dict(image_id=image_id, path_or_bytes=nifti("e.nii.gz", np.zeros(ref.shape))), 400,
             "empty submission"),
            ("all 255", dict(image_id=image_id, path_or_bytes=nifti("n.nii.gz", np.full(ref.shape, IGNORE))), 400,
             "empty submission"),
        ]
        before = snapshot(studies)
        for what, kwargs, status, text in cases:
            r = _put(client, **kwargs)
            assert r.status_code == status, (what, r.status_code, r.text)
            assert text in r.json()["detail"], (what, r.text)
            assert snapshot(studies) == before, f"{what}: something changed on disk"

        # a scan without an open assignment: a full labelmap cannot be interpreted
        other = next(i for i in client.get("/datastore/?output=all").json()["objects"] if i != image_id)
        # — refused, but the painting is kept aside (never lose an annotator's work), nothing else changes
        upload = nifti("x.nii.gz", painted(oracle(synth_root, other), slices))
        r = _put(client, other, upload)
        detail = r.json()["detail"]
        assert r.status_code == 409 and "no open slice assignment" in detail
        kept = studies / ".neolabel" / "refused" / other / "0001-final.nii.gz"
        assert f".neolabel/refused/{other}/0001-final.nii.gz" in detail
        assert kept.read_bytes() == upload.read_bytes()
        why = json.loads(kept.with_name("0001-final.json").read_text())
        assert why["status"] == 409 and why["image"] == other and "no open slice assignment" in why["reason"]
        after = {k: v for k, v in snapshot(studies).items() if not k.startswith(".neolabel/refused/")}
        assert after == before

        # and the good one is accepted after all that
        r = _put(client, image_id, nifti("ok.nii.gz", good))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["slices_accepted"] == sum(len(s["indices"]) for s in slices)
        assert body["ignored_voxels_outside_assignment"] == 16  # the 4×4 stray square
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        m = assigned_mask(ref.shape, slices)
        assert np.all(stored[~m] == IGNORE) and np.array_equal(stored[m], ref.data[m])


def test_unpainted_slices_return_to_budget_and_bulk_import(assigned_mask, inprocess_app, oracle, painted, studies,
        synth_root, tmp_path):
    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, s = a["id"], a["slices"][0]
        ref = oracle(synth_root, image_id)
        half = dict(s, indices=s["indices"][: len(s["indices"]) // 2])
        p = tmp_path / "half.nii.gz"
        save_volume(p, painted(ref, [half], stray=False), ref.affine, np.uint8)
        body = _put(client, image_id, p).json()
        assert body["slices_accepted"] == len(half["indices"])
        assert body["slices_missing"] == len(s["indices"]) - len(half["indices"])
        assert body["budget"]["spent_slices"] == len(half["indices"])
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        assert np.all(stored[~assigned_mask(ref.shape, [half])] == IGNORE)

        # bulk import of a partial label (255 present): taken as is, no assignment needed
        other = sorted(i for i in client.get("/datastore/?output=all").json()["objects"] if i != image_id)[0]
        ref2 = oracle(synth_root, other)
        part = np.full(ref2.shape, IGNORE, np.uint8)
        part[:, 10:12, :] = ref2.data[:, 10:12, :]
        p2 = tmp_path / "part.nii.gz"
        save_volume(p2, part, ref2.affine, np.uint8)
        r = _put(client, other, p2)
        assert r.status_code == 200 and r.json()["mode"] == "partial_import"
        assert np.array_equal(load_volume(studies / "labels" / "final" / f"{other}.nii.gz").data, part)


def test_twenty_concurrent_saves(inprocess_server, oracle, studies, synth_root, tmp_path):
    """20 threads upload partial labels (each a different coronal slab) over 4 scans through a real server."""
    from monailabel.client import MONAILabelClient

    with inprocess_server(studies) as (url, _app):
        ids = sorted(MONAILabelClient(url).datastore()["objects"])[:4]
        refs = {i: oracle(synth_root, i) for i in ids}
        jobs = []
        for k in range(20):
            image_id = ids[k % 4]
            ref = refs[image_id]
            part = np.full(ref.shape, IGNORE, np.uint8)
            j = 4 + 2 * (k // 4)
            part[:, j, :] = ref.data[:, j, :]
            p = tmp_path / f"c{k}.nii.gz"
            save_volume(p, part, ref.affine, np.uint8)
            jobs.append((image_id, p, j))
        errors: list = []

        def run(image_id, p):
            try:
                MONAILabelClient(url, client_id=f"c-{p.stem}").save_label(image_id, str(p))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i, p)) for i, p, _ in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
    json.loads((studies / "datastore_v2.json").read_text())  # valid JSON
    from monailabel.datastore.local import LocalDatastore

    from strategies.annotate.db import counter
    from strategies.annotate.state import open_state

    db = open_state(studies)
    assert counter(db.read(), "labels_saved") == 20
    assert db.read().execute("SELECT COUNT(*) FROM submissions").fetchone()[0] == 20
    reopened = LocalDatastore(str(studies), extensions=("*.nii.gz", "*.nii"), auto_reload=False)  # as at a restart
    for image_id in ids:
        assert reopened.get_label_uri(image_id, "final")
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        ref = refs[image_id]
        mine = [j for i, _, j in jobs if i == image_id]
        for j in mine:  # every one of the 5 submissions of this scan survived the merge
            assert np.array_equal(stored[:, j, :], ref.data[:, j, :])
        others = np.ones(ref.shape[1], bool)
        others[mine] = False
        assert np.all(stored[:, others, :] == IGNORE)
        assert len(list((studies / ".neolabel" / "submissions" / image_id).glob("*.nii.gz"))) == 5


def test_slicer_segment_numbering_is_mapped_back_to_classes(assigned_mask, inprocess_app, oracle, painted, studies,
        synth_root, tmp_path):
    """Slicer exports segment *positions* (idx) and sends their names in params.label_info."""
    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, slices = a["id"], a["slices"]
        ref = oracle(synth_root, image_id)
        good = painted(ref, slices, stray=False)
        keys = {1: "csf", 2: "cortical_gm", 3: "white_matter", 4: "background_inner", 5: "ventricles",
                6: "cerebellum", 7: "deep_gm", 8: "brainstem", 9: "hippocampus_amygdala"}
        order = [9, 8, 7, 6, 5, 4, 3, 2, 1]  # the annotator's segment list in reverse class order
        exported = np.zeros_like(good)
        for pos, cls in enumerate(order, start=1):
            exported[good == cls] = pos
        info = [{"name": keys[c], "idx": pos} for pos, c in enumerate(order, start=1)]
        p = tmp_path / "slicer.nii.gz"
        save_volume(p, exported, ref.affine, np.uint8)
        wm = order.index(3) + 1  # white matter is painted on every assigned slice
        unnamed = [dict(x, name="Segment_1") if x["idx"] == wm else x for x in info]
        bad = _put(client, image_id, p, params={"client_id": "alice", "label_info": unnamed})
        assert bad.status_code == 400 and "Segment_1" in bad.json()["detail"]
        r = _put(client, image_id, p, params={"client_id": "alice", "label_info": info})
        assert r.status_code == 200, r.text
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        m = assigned_mask(ref.shape, slices)
        assert np.array_equal(stored[m], ref.data[m])


def test_a_crash_mid_save_leaves_the_previous_state(inprocess_app, oracle, painted, studies, synth_root, tmp_path,
        monkeypatch):
    """The label file, the datastore JSON and the state are each replaced atomically: a failure while
    writing the new label leaves the previous label, valid JSON and no temporary files."""
    import os

    import training.data.nifti as nifti

    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, slices = a["id"], a["slices"]
        ref = oracle(synth_root, image_id)
        half = [dict(slices[0], indices=slices[0]["indices"][:1])]
        p = tmp_path / "one.nii.gz"
        save_volume(p, painted(ref, half, stray=False), ref.affine, np.uint8)
        assert _put(client, image_id, p).status_code == 200
        final = studies / "labels" / "final" / f"{image_id}.nii.gz"
        before_label = final.read_bytes()
        b = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        assert b["id"] != image_id  # the first scan was submitted: alice moves on
        before_state = _db_dump(studies)
        real_replace = os.replace

        def crash(src, dst):
            if str(dst).endswith(f"final/{image_id}.nii.gz"):
                raise OSError("disk full (simulated)")
            return real_replace(src, dst)

        monkeypatch.setattr(nifti.os, "replace", crash)
        part = np.full(ref.shape, 255, np.uint8)
        part[:, :, 0] = 0
        p2 = tmp_path / "import.nii.gz"
        save_volume(p2, part, ref.affine, np.uint8)
        with pytest.raises(OSError, match="simulated"):
            _put(client, image_id, p2)
        monkeypatch.setattr(nifti.os, "replace", real_replace)
        assert final.read_bytes() == before_label
        assert _db_dump(studies) == before_state
        json.loads((studies / "datastore_v2.json").read_text())
        assert not list((studies / "labels" / "final").glob(".tmp-*"))


def test_original_label_is_loadable_by_the_plugin_and_an_untouched_one_is_no_annotation(inprocess_app, oracle,
        painted, snapshot, studies, synth_root, tmp_path):
    """The plugin loads `original` only with params.label_names; submitting it unedited annotates nothing."""
    from training.data.labels import FRAME, FRAME_NAME, slicer_label_map

    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id = a["id"]
        info = client.get("/datastore/?output=all").json()["objects"][image_id]["labels"]["original"]["info"]
        # value v ↔ name v-1, and the frame (no class) as a segment of its own after the classes
        assert info["params"]["label_names"] == {**slicer_label_map(), FRAME_NAME: FRAME}
        original = client.get(f"/datastore/label?label={image_id}&tag=original")
        assert original.status_code == 200
        p = tmp_path / "original.nii.gz"
        p.write_bytes(original.content)
        before = snapshot(studies)
        r = _put(client, image_id, p)
        assert r.status_code == 400 and "empty submission" in r.json()["detail"]
        assert snapshot(studies) == before

        # painted on top of the frame: the frame voxels left as they were are unpainted (0), never a class
        ref = oracle(synth_root, image_id)
        frame = load_volume(p).data
        sub = painted(ref, a["slices"], stray=False)
        sub = np.where((frame != 0) & (sub == 0), frame, sub).astype(np.uint8)
        q = tmp_path / "on_frame.nii.gz"
        save_volume(q, sub, ref.affine, np.uint8)
        assert _put(client, image_id, q).status_code == 200
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        on_frame = (frame != 0) & (ref.data == 0)
        assert np.all(stored[on_frame] == 0)


def test_slice_left_as_pre_segmented_goes_back_to_the_budget():
    from strategies.annotate.submission import convert_submission
    from strategies.plan.assignment import SliceAssignment

    pre = np.zeros((6, 6, 6), np.uint8)
    pre[:, :, 1] = 3
    pre[:, :, 4] = 2
    a = SliceAssignment("img", "axial", 2, [1, 4])
    sub = pre.copy()
    sub[2, 2, 4] = 5  # the annotator corrected one voxel of slice 4, left slice 1 untouched
    res = convert_submission(sub, [a], original=pre)
    assert res.accepted == [{"axis": "axial", "voxel_axis": 2, "indices": [4]}]
    assert res.missing == [{"axis": "axial", "voxel_axis": 2, "indices": [1]}]
    assert np.all(res.partial[:, :, 1] == IGNORE) and res.partial[2, 2, 4] == 5


def test_image_upload_never_overwrites_or_escapes(inprocess_app, snapshot, studies, tmp_path):
    """Stock PUT /datastore/image: ids are checked, existing scans are not overwritten, non-NIfTI refused."""
    with inprocess_app(studies) as (client, _app):
        existing = sorted(client.get("/datastore/?output=all").json()["objects"])[0]
        img = tmp_path / "new.nii.gz"
        save_volume(img, np.ones((8, 8, 8), np.float32), np.eye(4))
        before = snapshot(studies)
        for image_id, body, name, status in [
            (existing, img.read_bytes(), "new.nii.gz", 409),
            ("..%2F..%2Fescape", img.read_bytes(), "new.nii.gz", 400),
            ("fresh", b"\x1f\x8b garbage", "new.nii.gz", 400),
            ("fresh", b"P5 1 1 255 x", "new.png", 415),
        ]:
            r = client.put(f"/datastore/image?image={image_id}", files={"file": (name, body)},
                           data={"params": "{}"})
            assert r.status_code == status, (image_id, r.status_code, r.text)
        assert snapshot(studies) == before
        r = client.put("/datastore/image?image=fresh", files={"file": ("new.nii.gz", img.read_bytes())},
                       data={"params": "{}"})
        assert r.status_code == 200 and "fresh" in client.get("/datastore/?output=all").json()["objects"]


def test_painting_off_the_assigned_slices_is_refused_but_kept(inprocess_app, oracle, painted, snapshot, studies,
        synth_root, tmp_path, monkeypatch):
    """Refused for training, yet kept aside with the reason (bounded per scan); the datastore is unchanged."""
    import strategies.annotate.intake as intake

    with inprocess_app(studies) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, s = a["id"], a["slices"][0]
        ref = oracle(synth_root, image_id)
        assigned = {i for x in a["slices"] if x["voxel_axis"] == s["voxel_axis"] for i in x["indices"]}
        centre = ref.shape[s["voxel_axis"]] // 2
        elsewhere = min((i for i in range(ref.shape[s["voxel_axis"]]) if i not in assigned),
                        key=lambda i: abs(i - centre))
        off = painted(ref, [dict(s, indices=[elsewhere])], stray=False)
        assert off.any()
        p = tmp_path / "off.nii.gz"
        save_volume(p, off, ref.affine, np.uint8)
        before = snapshot(studies)
        monkeypatch.setattr(intake, "MAX_REFUSED_PER_IMAGE", 1)
        first, second = _put(client, image_id, p), _put(client, image_id, p)
        assert first.status_code == second.status_code == 400
        assert "nothing was painted on the assigned slices" in first.json()["detail"]
        assert "kept on the server" in first.json()["detail"]
        assert "kept on the server" not in second.json()["detail"]  # the bound: one per scan here
        kept = sorted((studies / ".neolabel" / "refused" / image_id).iterdir())
        assert [k.name for k in kept] == ["0001-final.json", "0001-final.nii.gz"]
        assert np.array_equal(load_volume(kept[1]).data, off)
        after = {k: v for k, v in snapshot(studies).items() if not k.startswith(".neolabel/refused/")}
        assert after == before


def test_hostile_uploads_are_refused_cheaply_and_change_nothing(inprocess_app, snapshot, studies, tmp_path):
    """A 1 kB header claiming 2000³ voxels is refused from its header (< 1 s); an oversized upload is
    refused unread (413); an unknown strategy is a 404 that lists the strategies."""
    import time

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 2000))
    hdr.set_data_dtype(np.uint8)
    bomb = gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\1" * 512)
    assert len(bomb) < 1024
    with inprocess_app(studies, {"max_upload_mb": "0.05"}) as (client, _app):
        image_id = client.post("/activelearning/budget", json={"client_id": "alice"}).json()["id"]
        before = snapshot(studies)
        t0 = time.perf_counter()
        r = _put(client, image_id, bomb)
        assert time.perf_counter() - t0 < 1.0
        assert r.status_code == 400 and "shape" in r.json()["detail"], r.text
        big = np.random.default_rng(0).integers(0, 10, size=(64, 64, 64)).astype(np.uint8)
        p = tmp_path / "big.nii.gz"
        save_volume(p, big, np.eye(4), np.uint8)
        r = _put(client, image_id, p)
        assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"], r.text
        r = client.post("/activelearning/nope", json={"client_id": "alice"})
        assert r.status_code == 404, r.text
        assert "budget" in r.json()["detail"] and "uncertainty" in r.json()["detail"]
        assert snapshot(studies) == before


def _expire_leases(studies) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(studies / ".neolabel" / "annotation.db")) as con, con:
        con.execute("UPDATE leases SET expires_at = '2000-01-01T00:00:00+00:00'")


def test_a_late_save_is_judged_against_the_submitters_own_assignment(inprocess_app, make_model, oracle, painted,
        snapshot, studies, synth_root, tmp_path):
    """Alice's lease expires and the scan goes to Bob with other slices and his own `original` label; Alice's
    save is still judged against her slices and the pre-segmentation she was shown: a slice she left as
    pre-segmented is not taken for an annotation. Without that `original` the save is refused, and kept."""
    from neonatal_app.lib.configs.segmentation import model_path
    from strategies.annotate.original import shown_path

    make_model(model_path(studies))  # `original` = the model's pre-segmentation on the assigned slices
    with inprocess_app(studies, {"budget_dispersion": "0.5"}) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, (sa,) = a["id"], a["slices"]
        assert a["original_label"] == "pre-segmentation"
        shown = load_volume(studies / "labels" / "original" / f"{image_id}.nii.gz").data  # what her Slicer loads
        _expire_leases(studies)
        b = client.post("/activelearning/budget", json={"client_id": "bob", "budget_dispersion": "0.2"}).json()
        assert b["id"] == image_id
        only_alice = sorted(set(sa["indices"]) - set(b["slices"][0]["indices"]))
        assert only_alice, "the test needs slices of Alice's that Bob was not given"
        v, ref = sa["voxel_axis"], oracle(synth_root, image_id)

        def plane(i):
            return tuple(i if ax == v else slice(None) for ax in range(3))

        assert all(shown[plane(i)].any() for i in only_alice)  # left as shown, these are not empty
        upload = shown.copy()  # Alice paints one slice and leaves the rest as the model pre-segmented it
        painted_slice = next(i for i in only_alice if not np.array_equal(ref.data[plane(i)], shown[plane(i)]))
        upload[plane(painted_slice)] = ref.data[plane(painted_slice)]
        p = tmp_path / "alice.nii.gz"
        save_volume(p, upload, ref.affine, np.uint8)
        r = _put(client, image_id, p, params={"client_id": "alice"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["accepted"] == [{"axis": sa["axis"], "voxel_axis": v, "indices": [painted_slice]}]
        assert body["slices_missing"] == len(sa["indices"]) - 1
        stored = load_volume(studies / "labels" / "final" / f"{image_id}.nii.gz").data
        annotated = np.flatnonzero((stored != IGNORE).any(axis=tuple(ax for ax in range(3) if ax != v)))
        assert annotated.tolist() == [painted_slice]
        assert not shown_path(studies, image_id, "alice").exists()  # her assignment is done

        # Carol's lease on another scan expires, Dave gets it, and Carol's `original` is gone: refused, kept
        c = client.post("/activelearning/budget", json={"client_id": "carol"}).json()
        _expire_leases(studies)
        d = client.post("/activelearning/budget", json={"client_id": "dave"}).json()
        assert d["id"] == c["id"] != image_id
        shown_path(studies, c["id"], "carol").unlink()
        ref_c = oracle(synth_root, c["id"])
        q = tmp_path / "carol.nii.gz"
        save_volume(q, painted(ref_c, c["slices"], stray=False), ref_c.affine, np.uint8)
        before = snapshot(studies)
        r = _put(client, c["id"], q, params={"client_id": "carol"})
        assert r.status_code == 409 and "handed to another annotator" in r.json()["detail"], r.text
        assert f".neolabel/refused/{c['id']}/0001-final.nii.gz" in r.json()["detail"]
        after = {k: v for k, v in snapshot(studies).items() if not k.startswith(".neolabel/refused/")}
        assert after == before

        # the scan is deleted: Dave's `original` goes to the trash with it, nothing is left behind
        assert shown_path(studies, c["id"], "dave").is_file()
        assert client.delete(f"/datastore/image?id={c['id']}").status_code == 200
        assert not shown_path(studies, c["id"], "dave").parent.exists()
        assert list((studies / ".neolabel" / "trash").glob(f"*-{c['id']}/files/.neolabel/shown/{c['id']}/*"))


def test_deleting_a_final_label_frees_its_slices_for_annotation_again(inprocess_app, oracle, painted, studies,
        synth_root, tmp_path):
    """The label and its raw submissions go to the trash; its slices are no longer spent and the scan is
    handed out again (the audit trail keeps the submission and the deletion)."""
    import sqlite3

    with inprocess_app(studies, {"budget_dispersion": "1.0", "budget_total_slices": "1000"}) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id = a["id"]
        n = sum(len(s["indices"]) for s in a["slices"])
        ref = oracle(synth_root, image_id)
        p = tmp_path / "alice.nii.gz"
        save_volume(p, painted(ref, a["slices"], stray=False), ref.affine, np.uint8)
        assert _put(client, image_id, p).json()["slices_accepted"] == n
        assert client.get("/info/").json()["budget"]["spent_slices"] == n
        assert client.post("/activelearning/budget", json={"client_id": "bob"}).json()["id"] != image_id

        r = client.delete(f"/datastore/label?id={image_id}&tag=final")
        assert r.status_code == 200, r.text
        budget = client.get("/info/").json()["budget"]
        assert budget["spent_slices"] == 0 and budget["scans_touched"] == 0
        again = client.post("/activelearning/budget", json={"client_id": "carol"}).json()
        assert again["id"] == image_id and again["slices"] == a["slices"]
        trashed = list((studies / ".neolabel" / "trash").glob(f"*-{image_id}-final/files/labels/final/*"))
        assert len(trashed) == 1
        alice_raw = next((studies / ".neolabel" / "trash").glob(f"*-{image_id}-final/files/.neolabel/submissions/*/*"))

        # Carol's save after the deletion: a new raw file name, so Alice's row never points at Carol's painting
        q = tmp_path / "carol.nii.gz"
        save_volume(q, painted(ref, again["slices"], stray=False), ref.affine, np.uint8)
        assert _put(client, image_id, q, params={"client_id": "carol"}).status_code == 200
    with contextlib.closing(sqlite3.connect(studies / ".neolabel" / "annotation.db")) as con:
        actions = [r[0] for r in con.execute("SELECT action FROM audit WHERE target = ? ORDER BY id", (image_id,))]
        raws = [r[0] for r in con.execute("SELECT raw_path FROM submissions WHERE image = ? ORDER BY id", (image_id,))]
    assert actions[:4] == ["assign", "label.accepted", "label.delete", "label.release"]
    assert len(raws) == 2 and raws[0] != raws[1]
    assert raws[0].endswith(alice_raw.name) and (studies / raws[1]).is_file()
    assert not (studies / raws[0]).exists()  # Alice's file is in the trash, under its old name


def test_a_deleted_final_label_is_restored_with_its_slices_and_never_over_newer_work(inprocess_app, oracle,
        painted, studies, synth_root, tmp_path):
    """POST /neolabel/trash/{entry}/restore: the label and its raw submissions come back byte for byte and
    its slices are spent again; while the scan is leased, once it has a label again, twice, or for an
    unknown or a scan entry the answer is a 4xx and nothing changes."""
    import hashlib
    import sqlite3

    with inprocess_app(studies, {"budget_dispersion": "1.0", "budget_total_slices": "1000"}) as (client, _app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        image_id, n = a["id"], sum(len(s["indices"]) for s in a["slices"])
        ref = oracle(synth_root, image_id)
        p = tmp_path / "alice.nii.gz"
        save_volume(p, painted(ref, a["slices"], stray=False), ref.affine, np.uint8)
        assert _put(client, image_id, p).json()["slices_accepted"] == n
        final = studies / "labels" / "final" / f"{image_id}.nii.gz"
        digest = hashlib.sha256(final.read_bytes()).hexdigest()
        sub = client.get(f"/neolabel/submissions?image={image_id}").json()["submissions"][0]
        assert client.delete(f"/datastore/label?id={image_id}&tag=final").status_code == 200
        entry = next(e for e in client.get("/neolabel/trash").json()["trash"] if e["tag"] == "final")["entry"]

        completed = _app.datastore().status()["completed"]
        manifest = studies / ".neolabel" / "trash" / entry / "manifest.json"
        kept = manifest.read_text()
        manifest.write_text(json.dumps({**json.loads(kept), "image_sha256": "0" * 64}))  # as if the scan was replaced
        r = client.post(f"/neolabel/trash/{entry}/restore")
        assert r.status_code == 409 and "another scan" in r.json()["detail"] and not final.exists()
        manifest.write_text(kept)
        # leased again (Carol): refused, nothing moved
        assert client.post("/activelearning/budget", json={"client_id": "carol"}).json()["id"] == image_id
        r = client.post(f"/neolabel/trash/{entry}/restore")
        assert r.status_code == 409 and "carol" in r.json()["detail"] and not final.exists()
        assert client.get("/info/").json()["budget"]["spent_slices"] == 0
        _expire_leases(studies)  # Carol never saved
        # the budget was lowered since: restoring would overspend it, so it waits for the admin to raise it
        _app.ledger.update_settings({"budget_total_slices": n - 1}, actor="root")
        r = client.post(f"/neolabel/trash/{entry}/restore")
        assert r.status_code == 409 and "budget_total_slices" in r.json()["detail"] and not final.exists()
        assert client.get("/info/").json()["budget"]["spent_slices"] == 0
        listed = client.get("/neolabel/trash").json()["trash"]
        assert "restored_at" not in next(e for e in listed if e["entry"] == entry)
        _app.ledger.update_settings({"budget_total_slices": 1000}, actor="root")

        r = client.post(f"/neolabel/trash/{entry}/restore")
        assert r.status_code == 200, r.text
        assert r.json() == {"image": image_id, "tag": "final", "files": 2, "slices_counted": n}
        assert hashlib.sha256(final.read_bytes()).hexdigest() == digest
        assert client.get(f"/neolabel/submissions/{sub['id']}/file").status_code == 200  # Alice's raw file is back
        budget = client.get("/info/").json()["budget"]
        assert budget["spent_slices"] == n and budget["scans_touched"] == 1
        assert client.get(f"/datastore/label?label={image_id}&tag=final").status_code == 200
        assert _app.datastore().status()["completed"] == completed + 1
        nxt = client.post("/activelearning/budget", json={"client_id": "dave"}).json()
        assert nxt["id"] and nxt["id"] != image_id  # whole-scan dispersion: the restored scan is done again
        # a label of another tag comes back the same way (no slices to count)
        draft = tmp_path / "draft.nii.gz"
        save_volume(draft, ref.data.astype(np.uint8), ref.affine, np.uint8)
        assert _put(client, image_id, draft, tag="draft").status_code == 200
        assert client.delete(f"/datastore/label?id={image_id}&tag=draft").status_code == 200
        d_entry = next(e for e in client.get("/neolabel/trash").json()["trash"] if e["tag"] == "draft")["entry"]
        r = client.post(f"/neolabel/trash/{d_entry}/restore")
        assert r.status_code == 200 and r.json()["slices_counted"] == 0, r.text
        assert client.get(f"/datastore/label?label={image_id}&tag=draft").status_code == 200
        assert client.get("/info/").json()["budget"]["spent_slices"] == n

        assert client.post(f"/neolabel/trash/{entry}/restore").status_code == 409  # twice
        assert client.post("/neolabel/trash/nosuchentry/restore").status_code == 404
        # a second deletion, then a new label by Erin: the old one is never restored over hers
        assert client.delete(f"/datastore/label?id={image_id}&tag=final").status_code == 200
        second = next(e for e in client.get("/neolabel/trash").json()["trash"] if e["tag"] == "final"
                      and "restored_at" not in e)["entry"]
        e = client.post("/activelearning/budget", json={"client_id": "erin"}).json()
        q = tmp_path / "erin.nii.gz"
        save_volume(q, painted(ref, e["slices"], stray=False), ref.affine, np.uint8)
        assert _put(client, image_id, q, params={"client_id": "erin"}).status_code == 200
        erin = final.read_bytes()
        r = client.post(f"/neolabel/trash/{second}/restore")
        assert r.status_code == 409 and final.read_bytes() == erin
        assert client.get("/info/").json()["budget"]["spent_slices"] == n
        # a deleted scan is not restored through the API
        other = nxt["id"]
        assert client.delete(f"/datastore/image?id={other}").status_code == 200
        scan_entry = next(e for e in client.get("/neolabel/trash").json()["trash"] if e["tag"] is None)["entry"]
        assert client.post(f"/neolabel/trash/{scan_entry}/restore").status_code == 409
    with contextlib.closing(sqlite3.connect(studies / ".neolabel" / "annotation.db")) as con:
        actions = [r[0] for r in con.execute("SELECT action FROM audit WHERE target = ? ORDER BY id", (image_id,))]
    assert "label.recount" in actions and "label.restore" in actions


def test_trash_entry_names_never_leave_the_trash(tmp_path):
    from neonatal_app.lib.trash import TrashError, move_to_trash, read_entry

    (tmp_path / "x.txt").write_text("x")
    entry = move_to_trash(tmp_path, [tmp_path / "x.txt"], "img", {"image": "img", "tag": "t"}, "root", "delete", None)
    assert read_entry(tmp_path, entry.name)[1]["files"] == ["x.txt"]
    (tmp_path / ".neolabel" / "manifest.json").write_text("{}")  # a manifest one level up
    for name in ("..", ".", "", "../trash", f"{entry.name}/files", ".hidden", "nosuch"):
        with pytest.raises(TrashError) as err:
            read_entry(tmp_path, name)
        assert err.value.status == 404


def test_a_final_deletion_cut_short_by_a_crash_is_finished_at_startup(inprocess_app, oracle, painted, studies,
        synth_root, tmp_path):
    """kill -9 after the label moved to the trash but before its slices were released: the next start
    releases them, so the scan is not left spent and unlabelled for good; labelled scans keep theirs."""
    from neonatal_app.lib.trash import move_to_trash

    spent = {}
    with inprocess_app(studies, {"budget_dispersion": "1.0", "budget_total_slices": "1000"}) as (client, _app):
        for who in ("alice", "bob"):
            a = client.post("/activelearning/budget", json={"client_id": who}).json()
            ref = oracle(synth_root, a["id"])
            p = tmp_path / f"{who}.nii.gz"
            save_volume(p, painted(ref, a["slices"], stray=False), ref.affine, np.uint8)
            spent[a["id"]] = _put(client, a["id"], p, params={"client_id": who}).json()["slices_accepted"]
        assert client.get("/info/").json()["budget"]["spent_slices"] == sum(spent.values())
    alice_scan, bob_scan = spent
    final = studies / "labels" / "final" / f"{alice_scan}.nii.gz"
    # where the crash left it: moved to the trash (manifest and all), its slices not yet released
    move_to_trash(studies, [final], f"{alice_scan}-final", {"image": alice_scan, "tag": "final"}, "admin",
                  "label.delete", None)
    with inprocess_app(studies, {}) as (client, _app):
        assert client.get("/info/").json()["budget"]["spent_slices"] == spent[bob_scan] > 0
        assert client.post("/activelearning/budget", json={"client_id": "carol"}).json()["id"] == alice_scan
