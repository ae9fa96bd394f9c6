"""``/activelearning/<name>``: the next-sample strategies, thin wrappers around ``AnnotationService``.

``budget`` is the admin-configured label budget (its Slicer options table edits the settings);
``uncertainty`` and ``foreground_random`` spend the same budget with another slice selection.
"""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from neonatal_app.lib.auth import acting_client, note_download, require
from neonatal_app.lib.datastore import http_error
from strategies.annotate.ledger import REVISION_KEY
from strategies.annotate.submission import SubmissionRejected
from strategies.annotate.users import CONFIGURE
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
        """The options table: the settings, and the revision they are (sent back with every Next Sample, so a
        table fetched before an admin's edit is not taken for an edit: ``AnnotationLedger.table_edits``)."""
        if not self.editable:
            return {}
        rev, s = self.service.ledger.settings_table()
        choices = {"budget_axis": AXIS_MODES, "budget_selection": SELECTIONS}
        out: dict[str, Any] = {}
        for k, v in s.items():
            if k in choices:  # a list is shown as a drop-down; the current value first
                out[k] = [v] + [c for c in choices[k] if c != v]
            else:
                out[k] = v
        out[REVISION_KEY] = rev
        return out

    def info(self) -> dict[str, Any]:
        return {"description": self.description, "config": self.config(), "selection": self.selection or "configured"}

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        request = dict(request)
        edits = self._check_edit(request) if self.editable else {}
        # logged in: the lease is the user's (two Slicers with the default client id no longer share one);
        # the plugin's client id stays only as a device note
        device = request.get("client_id")
        request["client_id"] = acting_client(device)
        if device not in (None, request["client_id"]):
            request["device_id"] = device
        try:
            answer = self.service.next_sample(self.name, self.selection, request, edits=edits)
        except SubmissionRejected as exc:
            raise http_error(exc.status, str(exc)) from None
        if answer.get("id"):  # the plugin downloads the image without its token (see neonatal_app.lib.auth)
            note_download(answer["id"], float(self.service.ledger.settings()["lease_minutes"]))
        return answer

    def _check_edit(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request's edits of the settings, which need the admin role (refused, not silently dropped); what
        is an edit — a value that differs from the table as it was served — is the ledger's ``table_edits``.
        The service applies exactly these (not a second reading that an admin's edit in between could change)."""
        edits = self.service.ledger.table_edits(request)
        if edits:
            require(CONFIGURE, "changing the budget settings (" + ", ".join(sorted(edits)) + ")")
        return edits


class BudgetStrategy(AnnotationStrategy):
    """The admin-configured label budget (dispersion/axis/margin/selection) handed out scan by scan."""

    name = "budget"
    selection = None
    editable = True

    def __init__(self, service: Any) -> None:
        super().__init__(
            service, "Label budget: the admin's dispersion/axis/margin/selection, scan by scan, with leases"
        )


class UncertaintyStrategy(AnnotationStrategy):
    """Scans and slices with the highest predictive entropy of the served model first."""

    name = "uncertainty"
    selection = "uncertainty"

    def __init__(self, service: Any) -> None:
        super().__init__(service, "Most uncertain scan and slices (mean entropy over brain voxels), same budget")


class ForegroundRandomStrategy(AnnotationStrategy):
    """Random slices among the slices that contain brain: the baseline an active choice has to beat."""

    name = "foreground_random"
    selection = "random"

    def __init__(self, service: Any) -> None:
        super().__init__(service, "Foreground-aware random slices (brain slices only), same budget")
