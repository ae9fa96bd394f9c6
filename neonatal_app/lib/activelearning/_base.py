"""Shared shape of the three next-sample strategies: thin wrappers around ``AnnotationService``."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from neonatal_app.lib.datastore import http_error
from strategies.annotate.submission import SubmissionRejected
from strategies.plan.selection import AXIS_MODES, SELECTIONS


class AnnotationStrategy(Strategy):
    """``/activelearning/<name>``: next scan + slices for the requesting client (``client_id``)."""

    name = "budget"
    selection: str | None = None  # None = the admin's configured selection
    editable = False  # whether the Slicer options table shows (and edits) the budget settings

    def __init__(self, service: Any, description: str) -> None:
        super().__init__(description)
        self.service = service

    def config(self) -> dict[str, Any]:
        if not self.editable:
            return {}
        s = self.service.ledger.settings()
        choices = {"budget_axis": AXIS_MODES, "budget_selection": SELECTIONS}
        out: dict[str, Any] = {}
        for k, v in s.items():
            if k in choices:  # a list is shown as a drop-down; the current value first
                out[k] = [v] + [c for c in choices[k] if c != v]
            else:
                out[k] = v
        return out

    def info(self) -> dict[str, Any]:
        return {"description": self.description, "config": self.config(), "selection": self.selection or "configured"}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        try:
            return self.service.next_sample(self.name, self.selection, request)
        except SubmissionRejected as exc:
            raise http_error(exc.status, str(exc)) from None
