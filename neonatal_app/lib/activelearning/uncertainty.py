"""``uncertainty``: scans and slices with the highest predictive entropy of the served model first."""

from __future__ import annotations

from neonatal_app.lib.activelearning._base import AnnotationStrategy


class UncertaintyStrategy(AnnotationStrategy):
    name = "uncertainty"
    selection = "uncertainty"

    def __init__(self, service) -> None:
        super().__init__(service, "Most uncertain scan and slices (mean entropy over brain voxels), same budget")
