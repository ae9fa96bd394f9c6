"""``/infer/segmentation``: training's ``Predictor`` behind MONAI Label's infer interface.

The model file is the study set's published checkpoint; the predictor is rebuilt whenever the
file's modification time changes (a retraining publishes with ``os.replace``), and the model is
not offered at all (``is_valid`` false, so ``/info`` lists no model) before weights exist: MONAI
Label would otherwise "infer" with random weights.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from neonatal_app.lib.datastore import http_error
from training.data.labels import slicer_label_map
from training.data.nifti import save_volume

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str | None:
    """``auto`` → None (the Predictor picks CUDA when present)."""
    return None if device == "auto" else device


class SegmentationInfer(InferTask):
    """Whole-volume drawem9 segmentation with the study set's current model."""

    def __init__(self, model_path: str | Path, device: str = "auto", fast: bool = True,
                 studies: str | Path | None = None) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=slicer_label_map(),
            dimension=3,
            description="Neonatal brain drawem9 segmentation (DynUNet trained on the annotated slices)",
            config={"device": device, "fast": fast},
        )
        self.model_path = Path(model_path)
        self.studies = Path(os.path.abspath(studies)) if studies is not None else None
        self.device = device
        self.fast = fast
        self._lock = threading.Lock()
        self._predictor = None
        self._mtime: float | None = None

    def is_valid(self) -> bool:
        return self.model_path.is_file()

    def get_path(self, validate: bool = True) -> str | None:
        return str(self.model_path) if (self.model_path.is_file() or not validate) else None

    def version(self) -> str | None:
        """A stamp that changes whenever a new model is published (mtime in ns + size)."""
        try:
            st = self.model_path.stat()
        except OSError:
            return None
        return f"{st.st_mtime_ns}-{st.st_size}"

    def predictor(self):
        """The cached ``Predictor``, reloaded when the published file changed; None before a model exists."""
        from training.infer.predictor import Predictor

        with self._lock:
            try:
                mtime = self.model_path.stat().st_mtime_ns
            except OSError:
                self._predictor, self._mtime = None, None
                return None
            if self._predictor is None or mtime != self._mtime:
                log.info("loading model %s", self.model_path)
                self._predictor = Predictor.from_checkpoint(
                    self.model_path, device=resolve_device(self.device), fast=self.fast
                )
                self._mtime = mtime
            return self._predictor

    def _in_study_set(self, image: str) -> bool:
        """MONAI Label passes any existing server path through as is: only study-set images are segmented
        (an image of a dHCP view is a link into the tree, so compare resolved paths)."""
        if not os.path.isfile(image):
            return False
        if self.studies is None:
            return True
        real = os.path.realpath(image)
        return any(os.path.realpath(p) == real for p in self.studies.iterdir() if p.name.endswith((".nii", ".nii.gz")))

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["model_file"] = str(self.model_path)
        d["model_version"] = self.version()
        return d

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not image or not self._in_study_set(image):
            raise http_error(404, f"unknown image {request.get('image')!r}: not in this study set")
        pred = self.predictor()
        if pred is None:
            raise http_error(409, "no model has been trained yet: annotate some slices and start a training")
        t0 = time.perf_counter()
        label, affine = pred.predict([image])
        fd, out = tempfile.mkstemp(prefix="neolabel-seg-", suffix=".nii.gz")
        os.close(fd)
        save_volume(out, label, affine, dtype="uint8")
        return out, {
            "label_names": slicer_label_map(),
            "model_version": self.version(),
            "latencies": {"total": round(time.perf_counter() - t0, 3)},
        }
