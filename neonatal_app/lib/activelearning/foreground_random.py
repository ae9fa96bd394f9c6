"""``foreground_random``: random slices among the slices that contain brain (the baseline to beat)."""

from __future__ import annotations

from neonatal_app.lib.activelearning._base import AnnotationStrategy


class ForegroundRandomStrategy(AnnotationStrategy):
    name = "foreground_random"
    selection = "random"

    def __init__(self, service) -> None:
        super().__init__(service, "Foreground-aware random slices (brain slices only), same budget")
