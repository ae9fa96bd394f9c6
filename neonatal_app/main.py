"""neolabel's MONAI Label app: budgeted slice annotation of neonatal brain MRI with masked-loss retraining.

Adapters only (see DESIGN.md): the datastore enforces the label contract and turns Slicer
submissions into partial labels, ``/activelearning`` hands out budgeted slice assignments with
leases, ``/infer`` and ``/train`` wrap training's Predictor and train loop. All annotation state
lives in ``<studies>/.neolabel/`` so it survives restarts. Start it with ``neolabel serve``.
Logins and roles (``--conf auth none|local|oidc``) guard every endpoint: ``neonatal_app.lib.auth``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.batch_infer import BatchInferTask
from monailabel.utils.async_tasks.utils import processes, tasks

from neonatal_app.lib import auth, endpoints
from neonatal_app.lib.activelearning.slices import BudgetStrategy, ForegroundRandomStrategy, UncertaintyStrategy
from neonatal_app.lib.configs.segmentation import NAME as MODEL_NAME
from neonatal_app.lib.configs.segmentation import SegmentationConfig
from neonatal_app.lib.datastore import NeolabelDatastore, http_error
from strategies.annotate.catalog import ScanCatalog, label_file
from strategies.annotate.db import audit
from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.retrain import RetrainTriggers
from strategies.annotate.service import AnnotationService
from strategies.annotate.settings import AppConfig
from strategies.annotate.state import STATE_DIR, open_state
from strategies.annotate.tags import BRAIN_MASK
from strategies.annotate.users import UserStore
from training.data import labels as L
from training.data.labels import slicer_label_map

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
        self.db = open_state(studies)
        cache = Path(studies) / STATE_DIR / "cache"
        catalog = ScanCatalog(self.db, cache, brain_mask_of=label_file(studies, BRAIN_MASK))
        self.ledger = AnnotationLedger(self.db, self.app_config, catalog)
        self._store = NeolabelDatastore(studies, self.ledger, max_upload_mb=self.app_config.max_upload_mb)
        self.segmentation = SegmentationConfig(studies, self.app_config, self.ledger)
        # built here rather than in the init_* hooks, so the annotation core gets them through its constructor
        self._infer = self.segmentation.infer()
        self._trainer = self.segmentation.trainer()
        self.service = AnnotationService(studies, self.ledger, self.app_config, images=self._store,
                                         predictor=self._infer.predictor, model_version=self._infer.version,
                                         busy=self.is_training)  # background scoring waits for a retraining
        added = self.service.prepare()  # new scans' planner data now, not inside the first Next Sample
        if added:
            log.info("planner data of %d new scan(s) stored", added)
        self.triggers = RetrainTriggers(
            start_training=self._start_training,
            is_training=self.is_training,
            every_labels=self.app_config.retrain_every_labels,
            interval_minutes=self.app_config.retrain_interval_minutes,
            labels_since_train=self.ledger.labels_since_train,
            reset_count=self.ledger.reset_labels_since_train,
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="neolabel",
            description="Neonatal brain MRI: budgeted slice annotation, masked-loss retraining (drawem9)",
            version="0.1.0",
            labels=slicer_label_map(),  # 1–9: the plugin numbers segments 1, 2, … in this order
        )
        self.users = UserStore(self.db)
        self._guard_server(studies)

    def _guard_server(self, studies: str) -> None:
        """Logins and roles on MONAI Label's FastAPI app, when this process serves it (not in MONAI Label's
        training subprocess). MONAI Label builds the app before it answers the first request, so no request
        passes unguarded; a rebuilt app (``/reload``, tests) reconfigures the same guard."""
        authority = auth.build_authority(self.app_config, self.db, studies)
        if self.app_config.auth == "local" and not self.users.count():
            log.warning("--conf auth local without users: nobody can log in (neolabel users add --studies ...)")
        auth.GATE.configure(authority, self.app_config,
                            open_assignment=lambda image, user: bool(self.ledger.assignments_for(image, user)))
        server = sys.modules.get("monailabel.app")
        if server is not None:
            auth.install(server.app)
            endpoints.install(server.app)

    # ------------------------------------------------------------------ MONAI Label hooks
    def init_datastore(self) -> NeolabelDatastore:
        return self._store

    def init_infers(self) -> dict[str, Any]:
        return {MODEL_NAME: self._infer}

    def init_trainers(self) -> dict[str, Any]:
        return {MODEL_NAME: self._trainer}

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
        meta["strategy_settings"] = self.ledger.settings()
        meta["retrain"] = {
            "every_labels": self.app_config.retrain_every_labels,
            "interval_minutes": self.app_config.retrain_interval_minutes,
            "running": self.is_training(),
        }
        return meta

    def next_sample(self, request):
        """An unknown strategy is the client's mistake: 404 with the strategies there are (MONAI Label: 500)."""
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise http_error(404, f"unknown strategy {strategy!r}; strategies: {', '.join(sorted(self._strategies))}")
        return super().next_sample(request)

    def on_init_complete(self) -> None:
        super().on_init_complete()
        if self.triggers.start():
            log.info("scheduled retraining every %g minutes", self.app_config.retrain_interval_minutes)

    def on_save_label(self, image_id: str, label_id: str) -> dict[str, Any]:
        summary = self._datastore.pop_last_summary(image_id) or {}
        try:
            if self.triggers.on_label_saved():
                summary["retrain_started"] = True
        except Exception as exc:  # the label is already stored: a failed trigger must not turn the save into a 500
            log.exception("retrain trigger failed after saving %s", image_id)
            summary["retrain_error"] = str(exc)
        return summary

    # ------------------------------------------------------------------ retraining
    def is_training(self) -> bool:
        """A retraining runs: in MONAI Label's task subprocess, queued, or in this process."""
        if len(processes("train")):
            return True
        if any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks("train")):
            return True
        return self._trainer.is_running()

    def _start_training(self, reason: str):
        """Start ``/train/segmentation`` in MONAI Label's background subprocess (in-process outside a server).

        Audited under the actor ``server`` like an admin's ``/train`` start, so the log says who or what
        started every training (an in-process training is audited before it runs, it returns when done)."""
        log.info("starting retraining: %s", reason)
        if not self._server_mode:
            self._audit_automatic_start(reason, None)
            return self.train({"model": MODEL_NAME, "reason": reason})
        task = self.async_training(MODEL_NAME, params={MODEL_NAME: {"reason": reason}}, enqueue=False)
        if task:
            self._audit_automatic_start(reason, task.get("id") if isinstance(task, dict) else None)
        return task

    def _audit_automatic_start(self, reason: str, task_id: str | None) -> None:
        try:
            with self.db.transaction() as con:
                audit(con, "server", "train.start", MODEL_NAME, {"reason": reason, "task": task_id, "automatic": True})
        except Exception:  # the training runs either way: a failed record must not look like a failed start
            log.exception("automatic training start (%s, task %s) could not be audited", reason, task_id)


