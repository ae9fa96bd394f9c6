"""``budget``: the admin-configured label budget (dispersion, axis, margin, selection) handed out scan by scan."""

from __future__ import annotations

from neonatal_app.lib.activelearning._base import AnnotationStrategy


class BudgetStrategy(AnnotationStrategy):
    name = "budget"
    selection = None
    editable = True

    def __init__(self, service) -> None:
        super().__init__(
            service, "Label budget: the admin's dispersion/axis/margin/selection, scan by scan, with leases"
        )
