"""Next Sample for one study set: which scan and slices an annotator gets, and the ``original`` label.

The decision is the ledger's (``AnnotationLedger.grant``, one indexed query over the catalog's
per-scan planner data, so a request does no per-scan work). This module keeps the catalog current —
new scans, model outputs (brain extents and uncertainty from ``ModelOutputs``) — writes the
``original`` label that shows the assignment in Slicer, and formats the answer. The datastore and
the served model come in through the constructor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from strategies.annotate.ledger import AnnotationLedger, budget_config
from strategies.annotate.model_outputs import ModelOutputs
from strategies.annotate.original import instruction, keep_shown, original_label, original_label_names, shown_path
from strategies.annotate.settings import AppConfig
from strategies.annotate.submission import ANONYMOUS
from strategies.annotate.tags import BRAIN_MASK, ORIGINAL
from strategies.plan.extents import PlanEntry
from strategies.plan.selection import CLASS_SELECTIONS, SCORED_SELECTIONS
from training.data.nifti import read_header

log = logging.getLogger(__name__)


class ImageStore(Protocol):
    """What Next Sample needs of the datastore (MONAI Label's, in the app)."""

    def list_images(self) -> list[str]: ...

    def get_image_uri(self, image_id: str) -> str: ...

    def get_label_uri(self, image_id: str, tag: str) -> str: ...

    def store_label_array(self, image_id: str, data: np.ndarray, affine: np.ndarray, tag: str,
                          info: dict[str, Any] | None = None, durable: bool = True) -> str: ...


class AnnotationService:
    """Next-sample answers over a ledger, a datastore and (optionally) the served model."""

    def __init__(
        self,
        studies: str | Path,
        ledger: AnnotationLedger,
        config: AppConfig,
        images: ImageStore,
        predictor: Callable[[], Any] | None = None,
        model_version: Callable[[], str | None] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.studies = Path(studies)
        self.ledger = ledger
        self.catalog = ledger.catalog
        self.config = config
        self.images = images
        self.outputs = ModelOutputs(self.studies, predictor or (lambda: None), model_version or (lambda: None),
                                    self._image_ids, images.get_image_uri, busy=busy,
                                    on_computed=self.catalog.set_model_outputs)

    def budget_status(self) -> dict[str, Any]:
        return self.ledger.budget_status(len(self.images.list_images()))

    # ------------------------------------------------------------------ planner data
    def _image_ids(self) -> list[str]:
        return sorted(self.images.list_images())

    def brain_mask(self, image_id: str) -> str | None:
        """The scan's ``brain_mask`` label file, if it has one."""
        uri = self.images.get_label_uri(image_id, BRAIN_MASK)
        return uri if uri and Path(uri).is_file() else None

    def sync(self) -> int:
        """New scans into the catalog (only they are read); the number added."""
        return self.catalog.sync(self.images.list_images(), self.images.get_image_uri)

    def prepare(self) -> int:
        """At start: planner data of new scans and the plan of the configured budget, so that the
        first Next Sample does not pay for them; the number of new scans."""
        added = self.sync()
        self.catalog.ensure_plan(budget_config(self.ledger.settings()))
        return added

    def entries(self) -> list[PlanEntry]:
        """Every planned scan's entry (brain-mask label, else the newest model's label, else the head)."""
        self.sync()
        con = self.catalog.db.read()
        return [e for i in self.catalog.ids() if (e := self.catalog.entry(con, i)) is not None and e.has_brain]

    # ------------------------------------------------------------------ model outputs
    def prediction(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The served model's label for an image (computed now if the background worker has not yet)."""
        label = self.outputs.current_label(image_id)
        if label is None and self.outputs.has_model():
            log.warning("%s: the served model's prediction failed; the original label shows a frame", image_id)
        return label


    # ------------------------------------------------------------------ next sample
    def next_sample(self, strategy: str, selection: str | None, request: Mapping[str, Any],
                    edits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Assign the next scan and slices to the requesting client; ``{}`` when there is nothing to do.
        ``edits``: the settings edits the caller already read from the request (and checked the role for)."""
        client_id = str(request.get("client_id") or request.get("user") or ANONYMOUS)
        if edits is None:  # only the admin-editable `budget` strategy's options table changes the shared settings
            edits = self.ledger.table_edits(request) if strategy == "budget" else {}
        settings = self.ledger.update_settings(edits, actor=client_id)
        cfg = budget_config(settings, selection)
        self.sync()
        scored = cfg.selection in SCORED_SELECTIONS
        if scored or cfg.selection in CLASS_SELECTIONS or not self.catalog.all_have_brain_masks():
            self.outputs.refresh(self.config.model_outputs_wait_seconds)
        self.catalog.ensure_plan(cfg)
        by_uncertainty = scored and self.outputs.has_model() and self.catalog.has_scores(cfg)
        if scored and not by_uncertainty:
            log.info("%s: no model scores yet, uncertainty falls back to equidistant slices", strategy)
            cfg = budget_config(settings, "equidistant")
        granted = self.ledger.grant(client_id, cfg, strategy, by_uncertainty=by_uncertainty,
                                    device=request.get("device_id"))
        if granted is None:
            return {}
        for x in granted.assignments:
            x.strategy = strategy
        original = self.write_original(granted.image, granted.assignments, client_id)
        return {
            "id": granted.image,
            "slices": [{"axis": x.axis, "voxel_axis": x.voxel_axis, "indices": list(x.indices)}
                       for x in granted.assignments],
            "assignment": [x.to_json() for x in granted.assignments],
            "round": granted.assignments[0].round,
            "lease_expires_at": granted.lease.expires_at if granted.lease else None,
            "original_label": original,
            "instruction": instruction(granted.image, granted.assignments, original),
            "budget": self.budget_status(),
        }

    def write_original(self, image_id: str, assignments: list, client_id: str) -> str:
        """Store the ``original`` label (see ``strategies.annotate.original``) and keep the one handed to
        ``client_id``; returns its kind."""
        shape, affine = read_header(self.images.get_image_uri(image_id))
        pred = self.prediction(image_id)
        out, kind = original_label(shape, assignments, None if pred is None else pred[0])
        # the stock Slicer plugin loads `original` only when its info names the segments (value v = name v-1)
        self.images.store_label_array(
            image_id, out, affine, ORIGINAL,
            {"assignment": [x.to_json() for x in assignments], "kind": kind,
             "params": {"label_names": original_label_names(kind)}},
            durable=False,  # the server can write it again; no annotator's work is in it
        )
        keep_shown(self.images.get_label_uri(image_id, ORIGINAL), shown_path(self.studies, image_id, client_id))
        return kind
