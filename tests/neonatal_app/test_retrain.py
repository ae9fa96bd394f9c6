"""Retraining triggers: every N labels fires exactly at N, the schedule calls the training function,
and a trigger while a training runs never starts a second one (trigger guard and trainer file lock)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from strategies.annotate.retrain import RetrainTriggers
from training.data.nifti import save_volume


def test_every_n_fires_exactly_at_n():
    count = {"n": 0}
    started = []
    t = RetrainTriggers(lambda reason: started.append(reason) or {"id": len(started)}, lambda: False,
                        every_labels=3, labels_since_train=lambda: count["n"],
                        reset_count=lambda: count.__setitem__("n", 0))
    fired = []
    for _ in range(7):
        count["n"] += 1
        fired.append(t.on_label_saved())
    assert fired == [False, False, True, False, False, True, False]
    assert len(started) == 2


def test_disabled_triggers_never_fire():
    t = RetrainTriggers(lambda r: pytest.fail("must not train"), lambda: False, every_labels=0,
                        labels_since_train=lambda: 100)
    assert not t.on_label_saved()
    assert not t.start()  # interval 0 = no schedule


def test_no_second_training_while_one_runs():
    release = threading.Event()
    running = {"on": False}
    calls = []

    def start(reason):
        calls.append(reason)
        running["on"] = True
        release.wait(5)  # a slow start: a concurrent trigger must see it as running
        return {"id": 1}

    t = RetrainTriggers(start, lambda: running["on"], every_labels=1, labels_since_train=lambda: 5)
    th = threading.Thread(target=t.trigger, args=("first",))
    th.start()
    time.sleep(0.2)
    assert t.trigger("second") is False  # being started
    release.set()
    th.join()
    assert t.trigger("third") is False  # still running
    running["on"] = False
    assert t.trigger("fourth") is True
    assert calls == ["first", "fourth"]


def test_schedule_calls_training():
    calls = []
    n = {"v": 2}
    t = RetrainTriggers(lambda r: calls.append(r) or {"id": 1}, lambda: False, interval_minutes=0.005,
                        labels_since_train=lambda: n["v"], reset_count=lambda: n.__setitem__("v", 0))
    assert t.start(tick_seconds=0.05)
    try:
        t0 = time.time()
        while not calls and time.time() - t0 < 10:
            time.sleep(0.05)
    finally:
        t.stop()
    assert calls and "schedule" in calls[0]
    assert n["v"] == 0
    assert not t.on_schedule()  # nothing new since: the tick does not train


def test_app_triggers_on_the_nth_saved_label(inprocess_app, oracle, painted, served_copy, synth_root, tmp_path):
    studies = served_copy(synth_root, tmp_path)
    with inprocess_app(studies, {"retrain_every_labels": "2"}) as (client, app):
        started = []
        # MONAI Label's task runner stands in: no training subprocess
        app.async_training = lambda model, params, enqueue: started.append(params[model]["reason"]) or {"id": "fake"}
        answers = []
        for k in range(4):
            a = client.post("/activelearning/budget", json={"client_id": f"c{k}"}).json()
            ref = oracle(synth_root, a["id"])
            p = tmp_path / f"l{k}.nii.gz"
            save_volume(p, painted(ref, a["slices"]), ref.affine, np.uint8)
            r = client.put(f"/datastore/label?image={a['id']}", files={"label": ("l.nii.gz", p.read_bytes())},
                           data={"params": json.dumps({"client_id": f"c{k}"})})
            assert r.status_code == 200, r.text
            answers.append(bool(r.json().get("retrain_started")))
        assert answers == [False, True, False, True]
        assert len(started) == 2
        rows = app.db.read().execute("SELECT actor, action, target, detail FROM audit WHERE action LIKE 'train.%'")
        assert [(r["actor"], r["action"], r["target"], json.loads(r["detail"])) for r in rows] == [
            ("server", "train.start", "segmentation", {"reason": reason, "task": "fake", "automatic": True})
            for reason in started]
        assert all("retrain_every_labels=2" in reason for reason in started)
        # outside a server the training runs in this process: audited before it starts
        app._server_mode = False
        seen = []
        app.train = lambda request: seen.append(
            app.db.read().execute("SELECT detail FROM audit ORDER BY id DESC").fetchone()["detail"]) or {"id": None}
        assert app.triggers.trigger("in process")
        assert [json.loads(d) for d in seen] == [{"reason": "in process", "task": None, "automatic": True}]


def test_trainer_lock_refuses_a_second_training(inprocess_app, served_copy, synth_root, tmp_path):
    from filelock import FileLock

    studies = served_copy(synth_root, tmp_path)
    with inprocess_app(studies) as (_client, app):
        trainer = app._trainers["segmentation"]
        with FileLock(str(trainer.lock_path)):
            # the lock is held by "another training": a /train call (any trigger) is skipped
            assert trainer.is_running()
            out = trainer({"model": "segmentation"}, app.datastore())
        assert out["status"] == "skipped" and "another training" in out["reason"]
        assert not trainer.is_running()


def test_trainer_keeps_the_served_model_when_the_new_one_is_worse(inprocess_app, make_model, oracle, painted,
        served_copy, synth_root, tmp_path, monkeypatch):
    """The trainer passes the partial labels to training.fit.train.train, then publishes only a model that is
    not worse on the validation set (training and evaluation are stubbed: this is about the wiring)."""
    import hashlib
    from types import SimpleNamespace

    import training.evaluate.segmentation as ev
    import training.fit.train as tr
    from neonatal_app.lib.configs.segmentation import model_path
    from neonatal_app.lib.trainers.segmentation import next_generation
    from training.model.checkpoint import checkpoint_generation

    studies = served_copy(synth_root, tmp_path)
    seen = {}

    def fake_train(cfg, subjects, out_dir, partial_labels=None, val_subjects=None, init=None, progress=True):
        seen.update(ids=[s.id for s in subjects], partial=dict(partial_labels), val=len(val_subjects or []),
                    init=init, amp=cfg.amp, device=cfg.device, freeze=cfg.freeze)
        best = tmp_path / "new.pt"
        make_model(best)
        return SimpleNamespace(best_path=best, last_path=best, epochs_completed=1, n_train=len(subjects),
                               best_metric=None, history=[])

    scores = {}
    monkeypatch.setattr(tr, "train", fake_train)
    monkeypatch.setattr(ev, "evaluate_checkpoint",
                        lambda ckpt, subjects, **kw: SimpleNamespace(tissue_dice=scores[Path(ckpt).name]))

    with inprocess_app(studies, {"validation_dir": str(synth_root), "freeze": "medium"}) as (client, app):
        a = client.post("/activelearning/budget", json={"client_id": "alice"}).json()
        ref = oracle(synth_root, a["id"])
        p = tmp_path / "l.nii.gz"
        save_volume(p, painted(ref, a["slices"]), ref.affine, np.uint8)
        assert client.put(f"/datastore/label?image={a['id']}", files={"label": ("l.nii.gz", p.read_bytes())},
                          data={"params": "{}"}).status_code == 200
        make_model(model_path(studies))
        served = hashlib.sha256(model_path(studies).read_bytes()).hexdigest()
        trainer = app._trainers["segmentation"]

        scores.update({"new.pt": 0.5, "segmentation.pt": 0.7})
        out = trainer({"model": "segmentation"}, app.datastore())
        assert seen["ids"] == [a["id"]] and set(seen["partial"]) == {a["id"]}
        assert str(seen["partial"][a["id"]]).endswith(f"labels/final/{a['id']}.nii.gz")
        assert seen["val"] == 6 and seen["init"] == model_path(studies)
        assert seen["freeze"] == "medium"  # the transfer-learning level reaches training.fit.train
        assert seen["amp"] is False and seen["device"] == "cpu"  # mixed precision only on CUDA
        assert out["published"] is False and "kept the served model" in out["message"]
        assert hashlib.sha256(model_path(studies).read_bytes()).hexdigest() == served
        assert client.get("/info/").json()["train_stats"]["segmentation"]["published"] is False

        scores.update({"new.pt": 0.8})
        out = trainer({"model": "segmentation"}, app.datastore())
        assert out["published"] is True
        assert hashlib.sha256(model_path(studies).read_bytes()).hexdigest() != served
        # the published model is one generation past the served one (which carried none: generation 0)
        assert checkpoint_generation(model_path(studies)) == 1
        scores.update({"segmentation.pt": 0.7})
        assert trainer({"model": "segmentation"}, app.datastore())["published"] is True
        assert checkpoint_generation(model_path(studies)) == 2
    assert next_generation(tmp_path / "no-model.pt") == 0
