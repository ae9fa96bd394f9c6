"""What the served model says about each scan, per model version, computed in the background.

The strategies need, for every scan, the model's label (brain extent for planning; the
pre-segmentation shown in Slicer) and per-slice predictive entropy (uncertainty selection). After a
new model is published all of it is stale. Recomputing it inside a next-sample request would block
the annotator for minutes on a real study set (dHCP-size scans, ~12 s each with the paper network
on 2 CPU cores), so one worker thread computes the scans in the background (one prediction per
scan serves label and scores), and a request waits at most ``wait_s`` for it. Until a scan is done
for the current model, readers get its outputs from an earlier model (still a sensible ranking), or
none (the strategy then uses the head mask and equidistant slices for it). The worker pauses while a
retraining runs (``busy``); the assigned scan's own label is still computed on demand.

Labels are cached on disk (``.neolabel/cache/predictions/<id>.nii.gz`` + ``.version``), scores in
``.neolabel/cache/scores/<id>.npz`` with the version inside, so a restart recomputes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strategies.annotate.state import STATE_DIR
from strategies.plan.extents import PlanEntry, entry_from_arrays
from strategies.plan.uncertainty import slice_scores
from training.data.labels import BRAIN
from training.data.nifti import NiftiError, atomic_write, atomic_write_text, load_volume, save_volume

log = logging.getLogger(__name__)


def outputs_from_probabilities(image_id: str, probs: np.ndarray, affine: np.ndarray,
                               model_round: int = 0) -> tuple[np.ndarray, PlanEntry, dict[str, np.ndarray]]:
    """(label, plan entry with the predicted brain's slices, per-slice predictive entropy): what one
    prediction tells the planner about a scan (the server's worker and the simulation's loop).
    ``model_round``: the generation of the model (0 for the first), which sets claspe's noise schedule."""
    # argmax of the probabilities: /infer's argmax of the logits up to float ties
    label = np.argmax(probs, axis=0).astype(np.uint8)
    scores = slice_scores(probs, affine, mask=np.isin(label, np.asarray(BRAIN)), model_round=model_round)
    return label, entry_from_arrays(image_id, affine, label=label), scores


@dataclass(frozen=True)
class ScanOutputs:
    """One scan's model outputs for one model version (the label stays on disk: a dHCP-size label is
    18 MB, and a study set has hundreds of scans)."""

    version: str
    label_path: Path
    entry: PlanEntry
    scores: dict[str, np.ndarray]

    def label(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's label (uint8) and its affine."""
        v = load_volume(self.label_path)
        return np.asarray(v.data, dtype=np.uint8), v.affine


class ModelOutputs:
    """Per-scan model outputs, freshest first; a background worker brings them to the served model."""

    def __init__(
        self,
        studies: str | Path,
        predictor: Callable[[], Any],
        model_version: Callable[[], str | None],
        image_ids: Callable[[], list[str]],
        image_uri: Callable[[str], str],
        busy: Callable[[], bool] | None = None,
        busy_poll_s: float = 5.0,
        on_computed: Callable[[str, str, PlanEntry, dict[str, np.ndarray]], None] | None = None,
    ) -> None:
        self.cache = Path(studies) / STATE_DIR / "cache"
        # while busy() (a retraining runs) the worker waits: it would compete for the cores / GPU memory
        self.busy = busy or (lambda: False)
        self.busy_poll_s = busy_poll_s
        self._predictor = predictor
        self._model_version = model_version
        self._image_ids = image_ids
        self._image_uri = image_uri
        self._on_computed = on_computed or (lambda *_: None)  # the catalog takes extents and scores from here
        self._outputs: dict[str, ScanOutputs] = {}
        self._failed: dict[str, str] = {}  # image id → version whose prediction failed (not retried)
        self._lock = threading.Lock()  # the dicts above
        self._compute_lock = threading.Lock()  # one prediction at a time (it uses every core)
        self._worker: threading.Thread | None = None
        self._again = False  # a refresh arrived while the worker ran: it re-checks before it exits
        self._idle = threading.Event()
        self._idle.set()

    # ------------------------------------------------------------------ readers
    def has_model(self) -> bool:
        """Whether a model is served (a version and a predictor): without one there is nothing to compute."""
        return self._model_version() is not None and self._predictor() is not None

    def latest(self, image_id: str) -> ScanOutputs | None:
        """The outputs of the newest model that processed this scan (memory, else disk), or None."""
        with self._lock:
            out = self._outputs.get(image_id)
        if out is None:
            out = self._load(image_id)
            if out is not None:
                with self._lock:
                    self._outputs.setdefault(image_id, out)
        return out

    def current(self, image_id: str) -> ScanOutputs | None:
        """This scan's outputs for the served model, computed now if the worker has not got to it yet."""
        if not self.has_model():
            return None
        out = self.latest(image_id)
        if out is not None and out.version == str(self._model_version()):
            return out
        return self._compute(image_id)

    def current_label(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The served model's label of a scan (uint8, affine); recomputed if its cache file is unreadable."""
        for _ in range(2):
            out = self.current(image_id)
            if out is None:
                return None
            try:
                return out.label()
            except (OSError, NiftiError) as exc:
                log.warning("cached model label of %s unreadable (%s): recomputing", image_id, exc)
                with self._lock:
                    self._outputs.pop(image_id, None)
                self._paths(image_id)[1].unlink(missing_ok=True)  # the stamp: the cache no longer counts
        return None

    def refresh(self, wait_s: float) -> None:
        """Bring every scan to the served model in the background. The call that starts the worker waits
        at most ``wait_s`` for it (the first request after a publish); calls while it runs do not wait."""
        if not self.has_model():
            return
        with self._lock:
            started = self._worker is None
            if started:
                self._idle.clear()
                self._worker = threading.Thread(target=self._run, name="neolabel-model-outputs", daemon=True)
                self._worker.start()
            else:
                self._again = True
        if started and wait_s > 0:
            self._idle.wait(timeout=wait_s)

    def wait(self, timeout: float) -> bool:
        """Until the worker has nothing left to do (True) or ``timeout`` seconds passed (False)."""
        return self._idle.wait(timeout=timeout)

    def pending(self) -> list[str]:
        """Scans not yet processed with the served model (failures excluded)."""
        if not self.has_model():
            return []
        version = self._model_version()
        todo = []
        for image_id in self._image_ids():
            out = self.latest(image_id)
            if (out is None or out.version != str(version)) and self._failed.get(image_id) != str(version):
                todo.append(image_id)
        return todo

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        t0, done = time.perf_counter(), 0
        try:
            while True:
                todo = self.pending()
                if todo and self.busy():
                    time.sleep(self.busy_poll_s)
                    continue
                if todo:
                    if self._compute(todo[0]) is not None:
                        done += 1
                    elif todo[0] not in self._failed:
                        break  # the model went away meanwhile: nothing to compute with
                    continue
                with self._lock:  # exit only if no refresh came in since the last check
                    if not self._again:
                        self._worker = None
                        break
                    self._again = False
        except Exception:  # the worker must never take the server down; requests fall back meanwhile
            log.exception("model outputs worker stopped")
        finally:
            with self._lock:
                self._worker = None
                self._idle.set()
        if done:
            log.info("model outputs: %d scans brought to the served model in %.1f s", done, time.perf_counter() - t0)

    def _compute(self, image_id: str) -> ScanOutputs | None:
        with self._compute_lock:
            version, pred = self._model_version(), self._predictor()
            if version is None or pred is None:
                return None
            out = self.latest(image_id)
            if out is not None and out.version == str(version):
                return out  # done by another thread while this one waited
            try:
                probs, affine = pred.predict_probabilities([self._image_uri(image_id)])
                # the generation of the model that made these probabilities (stored in its checkpoint)
                label, entry, scores = outputs_from_probabilities(image_id, probs, affine,
                                                                  int(getattr(pred, "generation", 0)))
                del probs
                out = self._save(image_id, str(version), label, np.asarray(affine), entry, scores)
                self._on_computed(image_id, str(version), entry, scores)
            except Exception as exc:  # one unreadable scan must not stop the others
                log.warning("model outputs for %s failed: %s", image_id, exc)
                with self._lock:
                    self._failed[image_id] = str(version)
                return None
            with self._lock:
                self._outputs[image_id] = out
            return out

    # ------------------------------------------------------------------ disk cache
    def _paths(self, image_id: str) -> tuple[Path, Path, Path]:
        label = self.cache / "predictions" / f"{image_id}.nii.gz"
        return label, label.with_suffix(".version"), self.cache / "scores" / f"{image_id}.npz"

    def _save(self, image_id: str, version: str, label: np.ndarray, affine: np.ndarray, entry: PlanEntry,
              scores: dict[str, np.ndarray]) -> ScanOutputs:
        label_path, stamp, scores_path = self._paths(image_id)
        # the stamp last: a crash before it leaves the old stamp, which no longer matches the scores' version
        save_volume(label_path, label, affine, dtype=np.uint8)
        atomic_write(scores_path, lambda tmp: _save_npz(tmp, version, scores))
        atomic_write_text(stamp, version)
        return ScanOutputs(version, label_path, entry, scores)

    def _load(self, image_id: str) -> ScanOutputs | None:
        label, stamp, scores = self._paths(image_id)
        try:
            if not (label.is_file() and stamp.is_file() and scores.is_file()):
                return None
            version = stamp.read_text()
            with np.load(scores, allow_pickle=False) as z:
                if str(z["version"]) != version:
                    return None  # written by two different models: recompute
                s = {k.removeprefix("axis_"): np.asarray(z[k]) for k in z.files if k.startswith("axis_")}
            v = load_volume(label)
            entry = entry_from_arrays(image_id, v.affine, label=np.asarray(v.data, dtype=np.uint8))
            return ScanOutputs(version, label, entry, s)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring the cached model outputs of %s: %s", image_id, exc)
            return None


def _save_npz(path: str | Path, version: str, scores: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, version=np.asarray(version), **{f"axis_{k}": v for k, v in scores.items()})
