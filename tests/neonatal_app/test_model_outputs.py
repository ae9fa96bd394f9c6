"""ModelOutputs: the model's labels and uncertainty scores per scan, brought up to date in the background."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from strategies.annotate.model_outputs import ModelOutputs
from strategies.plan.uncertainty import MODEL_ROUND
from training.data.labels import NUM_CLASSES

SHAPE = (12, 14, 10)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


class FakePredictor:
    """Probabilities of a brain block whose size depends on the model version; can be slowed or fail."""

    def __init__(self, version: list[str], delay: float = 0.0, fail: set[str] | None = None) -> None:
        self.version, self.delay, self.fail = version, delay, fail or set()
        self.generation = 0  # as training.infer.Predictor: the checkpoint's model generation
        self.calls: list[tuple[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def predict_probabilities(self, uris: list[str]):
        uri = uris[0]
        self.calls.append((uri, self.version[0]))
        self.gate.wait(10)
        time.sleep(self.delay)
        if uri in self.fail:
            raise ValueError("unreadable scan")
        rng = np.random.default_rng(len(self.calls))
        lab = np.zeros(SHAPE, np.uint8)
        r = 2 + int(self.version[0][-1])  # v1 → brain from 3, v2 → from 4
        lab[r:-r, r:-r, 2:-2] = 7  # class 7 is a brain class
        probs = np.full((NUM_CLASSES, *SHAPE), 0.01, np.float32)
        np.put_along_axis(probs, lab[None].astype(np.int64), 1.0, axis=0)
        probs += rng.uniform(0, 0.3, probs.shape).astype(np.float32)
        return probs / probs.sum(0, keepdims=True), AFFINE


@pytest.fixture
def scans():
    return [f"scan{i}" for i in range(4)]


def make(tmp_path, scans, pred, version):
    return ModelOutputs(tmp_path, lambda: pred, lambda: version[0], lambda: list(scans), lambda i: i)


def test_background_worker_does_each_scan_once_per_model_and_a_restart_reuses_the_cache(tmp_path, scans):
    version = ["v1"]
    pred = FakePredictor(version)
    outputs = make(tmp_path, scans, pred, version)
    outputs.refresh(wait_s=30)
    assert outputs.pending() == []
    assert sorted(pred.calls) == [(s, "v1") for s in scans]  # one prediction serves label and scores
    for s in scans:
        out = outputs.latest(s)
        assert out.version == "v1" and out.label()[0].shape == SHAPE and out.entry.has_brain
        # per axis: mean entropy per slice, and per class the entropy mass and voxel count (claspe, fgrandom)
        assert set(out.scores) == {f"{ax}{suffix}" for ax in ("sagittal", "coronal", "axial")
                                   for suffix in ("", "_class_entropy", "_class_voxels")} | {MODEL_ROUND}
    outputs.refresh(wait_s=30)
    assert len(pred.calls) == len(scans)  # nothing to redo for the same model

    again = make(tmp_path, scans, pred, version)  # a server restart
    assert again.pending() == [] and len(pred.calls) == len(scans)
    for s in scans:
        assert np.array_equal(again.latest(s).label()[0], outputs.latest(s).label()[0])
        for ax, v in outputs.latest(s).scores.items():
            assert np.array_equal(again.latest(s).scores[ax], v)


def test_a_new_model_never_blocks_readers_who_get_the_previous_outputs_meanwhile(tmp_path, scans):
    version = ["v1"]
    pred = FakePredictor(version)
    outputs = make(tmp_path, scans, pred, version)
    outputs.refresh(wait_s=30)
    old = {s: outputs.latest(s) for s in scans}
    old_label = old[scans[0]].label()[0]

    version[0] = "v2"
    pred.gate.clear()  # the new model's predictions hang until released
    t = time.perf_counter()
    outputs.refresh(wait_s=0.2)  # starts the worker, waits at most 0.2 s for it
    assert time.perf_counter() - t < 5.0  # about wait_s, not the 10 s a prediction hangs
    assert all(outputs.latest(s) is old[s] for s in scans)  # the previous model's outputs meanwhile
    assert set(outputs.pending()) == set(scans)
    t = time.perf_counter()
    outputs.refresh(wait_s=5)  # the worker runs already: a later request does not wait at all
    assert time.perf_counter() - t < 1.0
    pred.gate.set()
    assert outputs.wait(30)
    assert outputs.pending() == []
    assert all(outputs.latest(s).version == "v2" for s in scans)
    assert not np.array_equal(outputs.latest(scans[0]).label()[0], old_label)


def test_scores_carry_the_generation_of_the_model_that_made_them(tmp_path, scans):
    """claspe's noise schedule reads the generation of the model that made the scores (its checkpoint's)."""
    version, pred = ["v1"], FakePredictor(["v1"])
    pred.version = version
    outputs = make(tmp_path, scans, pred, version)
    assert int(outputs.current(scans[0]).scores[MODEL_ROUND]) == 0
    version[0], pred.generation = "v2", 3
    assert int(outputs.current(scans[0]).scores[MODEL_ROUND]) == 3
    assert int(make(tmp_path, scans, FakePredictor(version), version).latest(scans[0]).scores[MODEL_ROUND]) == 3


def test_current_computes_one_scan_now_and_a_failing_scan_stops_nothing(tmp_path, scans):
    version = ["v1"]
    pred = FakePredictor(version, fail={scans[1]})
    outputs = make(tmp_path, scans, pred, version)
    assert outputs.current(scans[0]).version == "v1"
    assert pred.calls == [(scans[0], "v1")]
    outputs.refresh(wait_s=30)
    assert outputs.latest(scans[1]) is None and outputs.pending() == []  # failed once, not retried
    assert all(outputs.latest(s).version == "v1" for s in scans if s != scans[1])
    assert [c for c in pred.calls if c[0] == scans[1]] == [(scans[1], "v1")]


def test_no_model_no_outputs_and_no_worker(tmp_path, scans):
    version: list = [None]
    outputs = ModelOutputs(tmp_path, lambda: None, lambda: version[0], lambda: list(scans), lambda i: i)
    outputs.refresh(wait_s=1)
    assert outputs.current(scans[0]) is None and outputs.latest(scans[0]) is None and outputs.pending() == []


def test_a_model_that_goes_away_stops_the_worker(tmp_path, scans):
    """No busy loop: a version without a predictor (a model file being replaced) leaves nothing to do."""
    version = ["v1"]
    holder: list = [None]
    outputs = ModelOutputs(tmp_path, lambda: holder[0], lambda: version[0], lambda: list(scans), lambda i: i)
    assert outputs.pending() == []
    pred = holder[0] = FakePredictor(version, delay=0.2)
    outputs.refresh(wait_s=0)
    deadline = time.monotonic() + 10
    while not pred.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    holder[0] = None  # the model disappears while the worker runs (its first prediction is under way)
    assert outputs.wait(10)
    assert len([s for s in scans if outputs.latest(s) is not None]) == 1 and len(pred.calls) == 1


def test_an_unreadable_cached_label_is_recomputed(tmp_path, scans):
    version = ["v1"]
    pred = FakePredictor(version)
    outputs = make(tmp_path, scans, pred, version)
    label, _ = outputs.current_label(scans[0])
    outputs.latest(scans[0]).label_path.write_bytes(b"not a nifti")
    again, _ = outputs.current_label(scans[0])
    assert np.array_equal(again, label) and len(pred.calls) == 2


def test_the_worker_pauses_while_a_retraining_runs(tmp_path, scans):
    version, training = ["v1"], [True]
    pred = FakePredictor(version)
    outputs = ModelOutputs(tmp_path, lambda: pred, lambda: version[0], lambda: list(scans), lambda i: i,
                           busy=lambda: training[0], busy_poll_s=0.02)
    outputs.refresh(wait_s=0.3)
    assert pred.calls == [] and set(outputs.pending()) == set(scans)
    assert outputs.current(scans[2]).version == "v1"  # the assigned scan's label is still computed on demand
    training[0] = False
    assert outputs.wait(30) and outputs.pending() == [] and len(pred.calls) == len(scans)
