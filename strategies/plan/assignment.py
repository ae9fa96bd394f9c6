"""The slice assignment record shared by the planner, the server, the simulation and the datastore.

One ``SliceAssignment`` names one image, one anatomical axis and the *voxel* indices of the
slices to annotate along it (the JSON contract of DESIGN.md). A plan for axis ``mixed`` produces
one assignment per anatomical axis for the same image. ``indices`` are voxel indices of that
image's own grid, so a server can build the annotation mask without knowing the canonical frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from strategies.plan.axes import AXES, AxisError, anatomical_axes

FIELDS: tuple[str, ...] = (
    "image",
    "axis",
    "voxel_axis",
    "indices",
    "strategy",
    "round",
    "assigned_to",
    "assigned_at",
)


class AssignmentError(ValueError):
    """A slice assignment that breaks the contract (unknown axis, index out of range, ...)."""


@dataclass
class SliceAssignment:
    """Which slices of which image one annotator is asked to label.

    ``round`` counts the earlier assignments of the same image (0 = first visit); ``assigned_to``
    and ``assigned_at`` (ISO 8601) are ``None`` in a static plan that nobody has received yet.
    """

    image: str
    axis: str
    voxel_axis: int
    indices: list[int]
    strategy: str = "equidistant"
    round: int = 0
    assigned_to: str | None = None
    assigned_at: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, str) or not self.image:
            raise AssignmentError(f"assignment image id must be a non-empty string, got {self.image!r}")
        if self.axis not in AXES:
            raise AssignmentError(f"assignment for {self.image}: unknown axis {self.axis!r}; expected one of {AXES}")
        if isinstance(self.voxel_axis, bool) or not isinstance(self.voxel_axis, int | np.integer):
            raise AssignmentError(f"assignment for {self.image}: voxel_axis must be an integer 0–2")
        self.voxel_axis = int(self.voxel_axis)
        if self.voxel_axis not in (0, 1, 2):
            raise AssignmentError(f"assignment for {self.image}: voxel_axis {self.voxel_axis} is not 0, 1 or 2")
        try:
            idx = [int(i) for i in self.indices]
        except (TypeError, ValueError) as exc:
            raise AssignmentError(f"assignment for {self.image}: indices must be integers ({exc})") from None
        if any(i != j for i, j in zip(idx, self.indices, strict=True)):
            raise AssignmentError(f"assignment for {self.image}: indices must be integers, got {self.indices!r}")
        if any(i < 0 for i in idx):
            raise AssignmentError(f"assignment for {self.image}: negative slice index in {idx}")
        if len(set(idx)) != len(idx):
            raise AssignmentError(f"assignment for {self.image}: repeated slice index in {idx}")
        self.indices = sorted(idx)
        if isinstance(self.round, bool) or not isinstance(self.round, int | np.integer) or self.round < 0:
            raise AssignmentError(f"assignment for {self.image}: round must be a non-negative integer")
        self.round = int(self.round)
        if self.assigned_at is not None:
            try:
                datetime.fromisoformat(str(self.assigned_at))
            except ValueError:
                raise AssignmentError(
                    f"assignment for {self.image}: assigned_at {self.assigned_at!r} is not an ISO 8601 time"
                ) from None

    def check_image(self, shape: Sequence[int], affine: np.ndarray | None = None) -> None:
        """Raise :class:`AssignmentError` unless the assignment fits an image of this shape/affine."""
        if len(shape) < 3:
            raise AssignmentError(f"assignment for {self.image}: image shape {tuple(shape)} is not 3D")
        n = int(shape[self.voxel_axis])
        bad = [i for i in self.indices if i >= n]
        if bad:
            raise AssignmentError(
                f"assignment for {self.image}: slice indices {bad[:5]} out of range for voxel axis "
                f"{self.voxel_axis} of size {n}"
            )
        if affine is not None:
            try:
                v = anatomical_axes(affine)[self.axis]
            except AxisError as exc:
                raise AssignmentError(f"assignment for {self.image}: {exc}") from None
            if v != self.voxel_axis:
                raise AssignmentError(
                    f"assignment for {self.image}: axis {self.axis} is voxel axis {v} of this image, "
                    f"but the assignment says {self.voxel_axis}"
                )

    def to_json(self) -> dict[str, Any]:
        """The DESIGN.md JSON object (plain types only)."""
        return {
            "image": self.image,
            "axis": self.axis,
            "voxel_axis": self.voxel_axis,
            "indices": list(self.indices),
            "strategy": self.strategy,
            "round": self.round,
            "assigned_to": self.assigned_to,
            "assigned_at": self.assigned_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SliceAssignment:
        """Parse and validate; missing or unknown keys give :class:`AssignmentError`."""
        if not isinstance(data, dict):
            raise AssignmentError(f"a slice assignment must be a JSON object, got {type(data).__name__}")
        required = ("image", "axis", "voxel_axis", "indices")
        missing = [k for k in required if k not in data]
        if missing:
            raise AssignmentError(f"slice assignment lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise AssignmentError(f"slice assignment has unknown keys {unknown}; expected {list(FIELDS)}")
        if not isinstance(data["indices"], list | tuple):
            raise AssignmentError("slice assignment 'indices' must be a list of integers")
        return cls(
            image=data["image"],
            axis=data["axis"],
            voxel_axis=data["voxel_axis"],
            indices=list(data["indices"]),
            strategy=data.get("strategy", "equidistant"),
            round=data.get("round", 0),
            assigned_to=data.get("assigned_to"),
            assigned_at=data.get("assigned_at"),
        )

    @property
    def n_slices(self) -> int:
        return len(self.indices)
