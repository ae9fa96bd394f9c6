"""What the simulation measures is what the server stores: one painting, two entry points, one partial label."""

from __future__ import annotations

import json

import numpy as np

from apps.simulation.data import Oracle
from strategies.annotate.submission import paint_like_slicer
from strategies.plan.assignment import SliceAssignment
from training.data.dataset import open_dataset
from training.data.labels import IGNORE
from training.data.nifti import load_volume, save_volume


def test_server_and_oracle_store_byte_identical_partial_labels(inprocess_app, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    dataset = open_dataset(synth_root)
    oracle = Oracle(dataset.subjects)
    with inprocess_app(studies, {"budget_axis": "mixed", "budget_dispersion": "0.2"}) as (client, app):
        for client_id in ("alice", "bob"):
            answer = client.post("/activelearning/budget", json={"client_id": client_id}).json()
            image_id = answer["id"]
            assignments = [SliceAssignment.from_json(x) for x in answer["assignment"]]
            assert {x.axis for x in assignments} == {"sagittal", "coronal", "axial"}
            dense = load_volume(dataset.get(image_id).label)
            painting = paint_like_slicer(dense.data, assignments)  # the oracle's Slicer upload
            path = tmp_path / f"{client_id}.nii.gz"
            save_volume(path, painting, dense.affine, np.uint8)
            r = client.put(f"/datastore/label?image={image_id}", files={"label": ("label.nii.gz", path.read_bytes())},
                           data={"params": json.dumps({"client_id": client_id})})
            assert r.status_code == 200, r.text

            served = np.asarray(load_volume(app.datastore().get_label_uri(image_id, "final")).data, dtype=np.uint8)
            simulated = oracle.submit(image_id, assignments)
            assert simulated.dtype == served.dtype == np.uint8
            assert simulated.tobytes() == served.tobytes()
            annotated = simulated != IGNORE
            assert annotated.any() and not annotated.all()
            np.testing.assert_array_equal(simulated[annotated], dense.data[annotated])
