"""The annotation process of one study set: which scan and slices next, leases, budget, rounds.

Adapter only: the decisions are ``strategies.plan.incremental.next_assignment`` / ``record_submission``
over an ``AssignmentState`` that is persisted in ``<studies>/.neolabel/state.json``. This module
gathers what they need (plan entries with each scan's brain slices, per-slice uncertainty scores
from the served model, kept up to date in the background by ``ModelOutputs``), writes the
``original`` label that shows the assignment in Slicer, and formats the answers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from strategies.annotate.model_outputs import ModelOutputs
from strategies.annotate.settings import STRATEGY_KEYS, AppConfig, ConfError
from strategies.annotate.state import STATE_DIR, StateStore, image_record
from strategies.annotate.submission import ANONYMOUS, SubmissionRejected, SubmissionResult
from strategies.plan.assignment import SliceAssignment
from strategies.plan.budget import BudgetConfig
from strategies.plan.extents import ExtentCache, PlanEntry, entry_from_arrays
from strategies.plan.incremental import AssignmentState, new_state, next_assignment, record_submission
from training.data.nifti import load_volume, read_header

log = logging.getLogger(__name__)

BRAIN_MASK_TAG = "brain_mask"
FRAME_VALUE = 4  # "background (inside head)": marks the assigned slices when no model exists yet


def budget_config(settings: Mapping[str, Any], selection: str | None = None) -> BudgetConfig:
    return BudgetConfig(
        total_slices=int(settings["budget_total_slices"]),
        dispersion=float(settings["budget_dispersion"]),
        axis=str(settings["budget_axis"]),
        margin=float(settings["budget_margin"]),
        selection=selection or str(settings["budget_selection"]),
        seed=int(settings["seed"]),
    )


def head_mask(image: np.ndarray) -> np.ndarray:
    """Foreground of an image by Otsu's threshold: the brain extent's fallback when no mask or model exists."""
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0 or finite.max() <= finite.min():
        return np.zeros(img.shape, dtype=bool)
    return img > threshold_otsu(finite)


class AnnotationService:
    """Next-sample answers, the open assignment of an image, and submissions → state."""

    def __init__(
        self,
        studies: str | Path,
        state: StateStore,
        config: AppConfig,
        predictor: Callable[[], Any] | None = None,
        model_version: Callable[[], str | None] | None = None,
    ) -> None:
        self.studies = Path(studies)
        self.state = state
        self.config = config
        self.datastore = None  # set by the app once MONAI Label has built it
        self._predictor = predictor or (lambda: None)
        self._model_version = model_version or (lambda: None)
        self._extents = ExtentCache(self.studies / STATE_DIR / "cache" / "plan_extents.json")
        self._head_entries: dict[str, PlanEntry] = {}  # Otsu extents of scans the model has not seen yet
        # the lambdas: the app sets _predictor/_model_version/datastore after building this service
        self.outputs = ModelOutputs(self.studies, lambda: self._predictor(), lambda: self._model_version(),
                                    self._image_ids, lambda i: self.datastore.get_image_uri(i))
        self._lock = threading.Lock()
        self.last_reason: str | None = None
        self._init_settings()

    # ------------------------------------------------------------------ strategy settings
    def _init_settings(self) -> None:
        """Persisted settings win over defaults; a ``--conf`` key wins when its value is new.

        "New" = different from the value that key had at the previous start: MONAI Label rebuilds the
        app (same ``--conf``) in every training subprocess, and that must not undo an admin's edit
        made in Slicer since the server started.
        """
        with self.state.update() as st:
            saved = st.get("strategy") or {}
            conf = self.config.strategy_settings()
            applied = st.get("conf_applied") or {}
            merged = dict(conf)
            for k in STRATEGY_KEYS:
                conf_is_new = k in self.config.explicit and applied.get(k) != conf[k]
                if k in saved and not conf_is_new:
                    merged[k] = saved[k]
            st["conf_applied"] = {k: conf[k] for k in STRATEGY_KEYS if k in self.config.explicit}
            try:
                AppConfig().with_updates(merged)
            except ConfError as exc:
                log.warning("ignoring invalid persisted strategy settings (%s); using --conf/defaults", exc)
                merged = self.config.strategy_settings()
            st["strategy"] = merged

    def settings(self) -> dict[str, Any]:
        return dict(self.state.read()["strategy"])

    def update_settings(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """Apply the admin's edits (Slicer options table or API); invalid values raise ``SubmissionRejected``."""
        changes = {}
        for k, v in updates.items():
            if k not in STRATEGY_KEYS or v is None or isinstance(v, list | dict):
                continue  # a list is the unchanged choice list of the options table
            changes[k] = v
        if not changes:
            return self.settings()
        with self.state.update() as st:
            current = AppConfig().with_updates(st["strategy"])
            try:
                new = current.with_updates(changes)
            except ConfError as exc:
                raise SubmissionRejected(f"invalid strategy setting: {exc}", 400) from None
            st["strategy"] = new.strategy_settings()
            return dict(st["strategy"])

    # ------------------------------------------------------------------ assignment state
    def _load_assignment_state(self, st: dict[str, Any], settings: Mapping[str, Any]) -> AssignmentState:
        cfg = budget_config(settings)
        raw = st.get("assignment")
        if not raw:
            return new_state(cfg)
        a = AssignmentState.from_json(raw)
        a.config = cfg  # the admin may have changed the budget since
        return a

    def budget_status(self) -> dict[str, Any]:
        st = self.state.read()
        a = self._load_assignment_state(st, st["strategy"])
        now = datetime.now(timezone.utc)
        leases = [lz for lz in a.leases if not lz.expired(now)]
        n_images = len(self.datastore.list_images()) if self.datastore is not None else None
        return {
            "total_slices": int(a.config.total_slices),
            "spent_slices": int(a.spent),
            "leased_slices": int(sum(lz.n_slices for lz in leases)),
            "remaining_slices": max(0, int(a.config.total_slices) - a.spent - sum(lz.n_slices for lz in leases)),
            "scans_touched": len([i for i, axes in a.annotated.items() if any(axes.values())]),
            "scans_total": n_images,
            "rounds": int(sum(a.visits.values())),
            "open_leases": [
                {"image": lz.image, "client_id": lz.client_id, "expires_at": lz.expires_at} for lz in leases
            ],
            "labels_saved": int(st.get("labels_saved", 0)),
            "labels_since_train": int(st.get("labels_since_train", 0)),
            "last_reason": self.last_reason,
        }

    def assignments_for(self, image_id: str, client_id: str | None = None) -> list[SliceAssignment] | None:
        """The assignment a submission for ``image_id`` is checked against: the submitter's open lease, else
        the last one handed to the submitter and not yet submitted (a late submission after the lease expired,
        even if the scan was handed to someone else since), else — for a submitter the server cannot tell
        (no client id) — the open lease on the image."""
        return self._match(self.state.read(), image_id, client_id)[0]

    def _match(self, st: dict, image_id: str, client_id: str | None) -> tuple[list[SliceAssignment] | None, bool]:
        """(assignments, matched by the submitter's own client id)."""
        a = AssignmentState.from_json(st["assignment"]) if st.get("assignment") else None
        if client_id and a is not None and (own := a.lease_of(image=image_id, client_id=client_id)) is not None:
            return list(own.assignments), True
        rec = st["images"].get(image_id) or {}
        last = (rec.get("last_assignments") or {}).get(client_id or "")
        if last and not last.get("submitted"):
            return [SliceAssignment.from_json(x) for x in last["parts"]], True
        anonymous = client_id in (None, "", ANONYMOUS)
        if anonymous and a is not None and (any_ := a.lease_of(image=image_id)) is not None:
            return list(any_.assignments), False
        return None, False

    # ------------------------------------------------------------------ plan entries
    def _image_ids(self) -> list[str]:
        return sorted(self.datastore.list_images())

    def entries(self) -> list[PlanEntry]:
        """One entry per image with its brain slices: brain-mask label, else the newest model's label
        (``ModelOutputs``: possibly an earlier model's while the served one is being applied), else Otsu."""
        out: list[PlanEntry] = []
        for image_id in self._image_ids():
            image = Path(self.datastore.get_image_uri(image_id))
            mask_uri = self._brain_mask(image_id)
            try:
                if mask_uri is not None:
                    shape, slices, _ = self._extents.brain_slices(mask_uri, "mask")
                    _, affine = read_header(image)
                    out.append(PlanEntry(image_id, shape, affine, slices))
                    continue
                model = self.outputs.latest(image_id)
                if model is not None and model.entry.has_brain:
                    out.append(model.entry)
                    continue
                entry = self._head_entries.get(image_id)
                if entry is None:
                    vol = load_volume(image)
                    entry = self._head_entries[image_id] = entry_from_arrays(image_id, vol.affine,
                                                                             mask=head_mask(vol.data))
                if entry.has_brain:
                    out.append(entry)
            except (OSError, ValueError) as exc:
                log.warning("cannot plan %s: %s", image_id, exc)
        self._extents.save()
        return out

    # ------------------------------------------------------------------ model outputs
    def _brain_mask(self, image_id: str) -> str | None:
        """The scan's ``brain_mask`` label file, if it has one."""
        uri = self.datastore.get_label_uri(image_id, BRAIN_MASK_TAG)
        return uri if uri and Path(uri).is_file() else None

    def _all_have_brain_masks(self) -> bool:
        """Then planning needs no model label (the background work is needed for uncertainty only)."""
        return all(self._brain_mask(image_id) is not None for image_id in self._image_ids())

    def prediction(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The served model's label for an image (computed now if the background worker has not yet)."""
        label = self.outputs.current_label(image_id)
        if label is None and self.outputs.has_model():
            log.warning("%s: the served model's prediction failed; the original label shows a frame", image_id)
        return label

    def scores(self, entries: list[PlanEntry]) -> dict[str, dict[str, np.ndarray]] | None:
        """Per-slice predictive entropy (``strategies.plan.uncertainty.slice_scores``) of the scans a model has
        processed, the newest model's first; scans without are ranked last by the strategy."""
        if not self.outputs.has_model():
            return None
        out = {}
        for e in entries:
            model = self.outputs.latest(e.id)
            if model is not None:
                out[e.id] = model.scores
        return out or None

    # ------------------------------------------------------------------ next sample
    def next_sample(self, strategy: str, selection: str | None, request: Mapping[str, Any]) -> dict[str, Any]:
        """Assign the next scan and slices to the requesting client; ``{}`` when there is nothing to do."""
        if self.datastore is None:
            raise RuntimeError("datastore not initialised")
        # only the admin-editable `budget` strategy's options table changes the shared settings
        edits = {k: request[k] for k in STRATEGY_KEYS if k in request} if strategy == "budget" else {}
        settings = self.update_settings(edits)
        client_id = str(request.get("client_id") or request.get("user") or ANONYMOUS)
        cfg = budget_config(settings, selection)
        if cfg.selection == "uncertainty" or not self._all_have_brain_masks():
            self.outputs.refresh(self.config.model_outputs_wait_seconds)
        entries = self.entries()
        scores = self.scores(entries) if cfg.selection == "uncertainty" else None
        if cfg.selection == "uncertainty" and not scores:
            log.info("%s: no model yet, uncertainty falls back to equidistant slices", strategy)
            cfg = budget_config(settings, "equidistant")
        now = datetime.now(timezone.utc)
        with self._lock, self.state.update() as st:
            a = self._load_assignment_state(st, settings)
            persisted = a.config
            a.config = cfg
            res = next_assignment(a, entries, client_id, now, lease_seconds=float(settings["lease_minutes"]) * 60,
                                  scores=scores)
            res.state.config = persisted
            st["assignment"] = res.state.to_json()
            self.last_reason = res.reason if not res.assignments else None
            if not res.assignments:
                log.info("next sample for %s: none (%s)", client_id, res.reason)
                return {}
            image_id = res.image
            lease = res.state.lease_of(image=image_id)
            rec = image_record(st, image_id)
            parts = [x.to_json() for x in res.assignments]
            lasts = rec.setdefault("last_assignments", {})
            if (lasts.get(client_id) or {}).get("parts") != parts:
                lasts[client_id] = {"parts": parts, "strategy": strategy, "submitted": False}
        for x in res.assignments:
            x.strategy = strategy
        original = self.write_original(image_id, res.assignments)
        slices = [{"axis": x.axis, "voxel_axis": x.voxel_axis, "indices": list(x.indices)} for x in res.assignments]
        return {
            "id": image_id,
            "slices": slices,
            "assignment": [x.to_json() for x in res.assignments],
            "round": res.assignments[0].round,
            "lease_expires_at": lease.expires_at if lease else None,
            "original_label": original,
            "instruction": instruction(image_id, res.assignments, original),
            "budget": self.budget_status(),
        }

    def write_original(self, image_id: str, assignments: list[SliceAssignment]) -> str:
        """Store the ``original`` label: model pre-segmentation on the assigned slices, 0 elsewhere."""
        from strategies.annotate.masks import assignment_mask

        shape, affine = read_header(self.datastore.get_image_uri(image_id))
        mask = assignment_mask(shape, assignments)
        out = np.zeros(shape, dtype=np.uint8)
        pred = self.prediction(image_id)
        if pred is not None:
            out[mask] = pred[0][mask]
            kind = "pre-segmentation"
        else:
            for x in assignments:  # a frame around each assigned slice makes it visible without a model
                for i in x.indices:
                    sl: list[Any] = [slice(None)] * 3
                    sl[x.voxel_axis] = i
                    plane = out[tuple(sl)]
                    plane[0, :] = plane[-1, :] = plane[:, 0] = plane[:, -1] = FRAME_VALUE
            kind = "frame"
        from neonatal_app.lib.infers.segmentation import slicer_label_map

        # the stock Slicer plugin loads `original` only when its info names the segments (value v = name v-1)
        self.datastore.store_label_array(
            image_id, out, affine, "original",
            {"assignment": [x.to_json() for x in assignments], "kind": kind,
             "params": {"label_names": slicer_label_map()}},
        )
        return kind

    # ------------------------------------------------------------------ submissions
    def on_accepted(self, image_id: str, result: SubmissionResult, client_id: str, summary: dict) -> dict[str, Any]:
        """Record an accepted submission: slices annotated, lease closed, round counted."""
        with self._lock, self.state.update() as st:
            rec = image_record(st, image_id)
            if result.mode == "assignment":
                _, own = self._match(st, image_id, client_id)
                a = self._load_assignment_state(st, st["strategy"])
                done = [SliceAssignment(image_id, x["axis"], x["voxel_axis"], x["indices"]) for x in result.accepted]
                # the submitter's lease closes; another annotator's lease on this scan drops the slices just done
                a = record_submission(a, done, client_id=client_id if own else None)
                a.config = budget_config(st["strategy"])
                st["assignment"] = a.to_json()
                last = (rec.get("last_assignments") or {}).get(client_id)
                if last:
                    last["submitted"] = True
            rec["rounds"] = int(rec.get("rounds", 0)) + 1
            rec["submissions"].append(
                {k: summary[k] for k in ("raw_submission", "client_id", "saved_at", "mode", "slices_accepted",
                                         "accepted", "ignored_voxels_outside_assignment") if k in summary}
            )
            st["labels_saved"] = int(st.get("labels_saved", 0)) + 1
            st["labels_since_train"] = int(st.get("labels_since_train", 0)) + 1
            round_ = rec["rounds"]
        return {"round": round_, "budget": self.budget_status()}


def instruction(image_id: str, assignments: list[SliceAssignment], original: str) -> str:
    parts = "; ".join(
        f"{x.axis} slices {', '.join(str(i) for i in x.indices)} (voxel axis {x.voxel_axis})" for x in assignments
    )
    shown = ("the 'original' label shows the model's pre-segmentation on them" if original == "pre-segmentation"
             else "the 'original' label frames them")
    return (f"Label {parts} of {image_id} completely (every voxel of each slice); {shown}. "
            "Paint elsewhere is ignored; unpainted assigned slices return to the budget.")

