"""neolabel's MONAI Label app: budgeted slice annotation of neonatal brain MRI with masked-loss retraining.

Adapters only (see DESIGN.md): the datastore enforces the label contract and turns Slicer
submissions into partial labels, ``/activelearning`` hands out budgeted slice assignments with
leases, ``/infer`` and ``/train`` wrap training's Predictor and train loop. All annotation state
lives in ``<studies>/.neolabel/`` so it survives restarts. Start it with ``neolabel serve``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.batch_infer import BatchInferTask

from neonatal_app.lib.activelearning.budget import BudgetStrategy
from neonatal_app.lib.activelearning.foreground_random import ForegroundRandomStrategy
from neonatal_app.lib.activelearning.uncertainty import UncertaintyStrategy
from neonatal_app.lib.configs.segmentation import NAME as MODEL_NAME
from neonatal_app.lib.configs.segmentation import SegmentationConfig
from neonatal_app.lib.datastore import NeolabelDatastore
from neonatal_app.lib.infers.segmentation import slicer_label_map
from strategies.annotate.retrain import RetrainTriggers
from strategies.annotate.service import AnnotationService
from strategies.annotate.settings import AppConfig
from strategies.annotate.state import StateStore
from training.data import labels as L

log = logging.getLogger(__name__)


class _BatchInfer(BatchInferTask):
    """MONAI Label's batch infer defaults to multi-GPU (ZeroDivisionError without GPUs)."""

    def __call__(self, request, datastore, infer):
        request = dict(request)
        request.setdefault("multi_gpu", torch.cuda.device_count() > 1)
        return super().__call__(request, datastore, infer)


class NeonatalApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.app_config = AppConfig.from_conf(conf)  # ConfError (a ValueError) stops the start with a message
        self.state = StateStore(studies)
        self.service = AnnotationService(studies, self.state, self.app_config)
        self.segmentation = SegmentationConfig(studies, self.app_config, self.state)
        self.triggers: RetrainTriggers | None = None
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="neolabel",
            description="Neonatal brain MRI: budgeted slice annotation, masked-loss retraining (drawem9)",
            version="0.1.0",
            labels=slicer_label_map(),  # 1–9: the plugin numbers segments 1, 2, … in this order
        )
        infer = self._infers.get(MODEL_NAME)
        self.service._predictor = infer.predictor
        self.service._model_version = infer.version
        self.service.datastore = self._datastore
        trainer = self._trainers.get(MODEL_NAME)

        def is_training() -> bool:
            return self._training_running(trainer)

        self.service.outputs.busy = is_training  # background scoring waits for a retraining to end
        self.triggers = RetrainTriggers(
            start_training=self._start_training,
            is_training=is_training,
            every_labels=self.app_config.retrain_every_labels,
            interval_minutes=self.app_config.retrain_interval_minutes,
            labels_since_train=lambda: int(self.state.read().get("labels_since_train", 0)),
            reset_count=self._reset_count,
        )

    # ------------------------------------------------------------------ MONAI Label hooks
    def init_datastore(self) -> NeolabelDatastore:
        return NeolabelDatastore(
            self.studies,
            self.state,
            assignments_for=self.service.assignments_for,
            on_accepted=self.service.on_accepted,
        )

    def init_infers(self) -> dict[str, Any]:
        return {MODEL_NAME: self.segmentation.infer()}

    def init_trainers(self) -> dict[str, Any]:
        return {MODEL_NAME: self.segmentation.trainer()}

    def init_strategies(self) -> dict[str, Any]:
        return {
            "budget": BudgetStrategy(self.service),
            "uncertainty": UncertaintyStrategy(self.service),
            "foreground_random": ForegroundRandomStrategy(self.service),
        }

    def init_scoring_methods(self) -> dict[str, Any]:
        return {}

    def init_batch_infer(self):
        return _BatchInfer()

    def info(self) -> dict[str, Any]:
        meta = super().info()
        meta.pop("config", None)  # the Slicer plugin refuses a server whose /info has a top-level "config"
        meta["label_colors"] = {k: v for k, v in L.slicer_colors().items() if k in self.labels}
        meta["class_table"] = L.class_table()
        meta["budget"] = self.service.budget_status()
        meta["strategy_settings"] = self.service.settings()
        meta["retrain"] = {
            "every_labels": self.app_config.retrain_every_labels,
            "interval_minutes": self.app_config.retrain_interval_minutes,
            "running": self._training_running(self._trainers.get(MODEL_NAME)),
        }
        return meta

    def on_init_complete(self) -> None:
        super().on_init_complete()
        if self.triggers is not None and self.triggers.start():
            log.info("scheduled retraining every %g minutes", self.app_config.retrain_interval_minutes)

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        summary = self._datastore.pop_last_summary(image_id) or {}
        try:
            if self.triggers is not None and self.triggers.on_label_saved():
                summary["retrain_started"] = True
        except Exception as exc:  # the label is already stored: a failed trigger must not turn the save into a 500
            log.exception("retrain trigger failed after saving %s", image_id)
            summary["retrain_error"] = str(exc)
        return summary

    # ------------------------------------------------------------------ retraining
    def _reset_count(self) -> None:
        with self.state.update() as st:
            st["labels_since_train"] = 0

    def _training_running(self, trainer) -> bool:
        from monailabel.utils.async_tasks.utils import processes, tasks

        if len(processes("train")):
            return True
        if any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks("train")):
            return True
        return bool(trainer is not None and trainer.is_running())

    def _start_training(self, reason: str):
        """Start ``/train/segmentation`` in MONAI Label's background subprocess (in-process outside a server)."""
        log.info("starting retraining: %s", reason)
        if self._server_mode:
            return self.async_training(MODEL_NAME, params={MODEL_NAME: {"reason": reason}}, enqueue=False)
        return self.train({"model": MODEL_NAME, "reason": reason})


