"""The drawem9 label contract: class table, ignore value, tissue classes and validation.

This is the one place that knows what a label value means. Everything else asks this module
(``CLASSES``, ``IGNORE``, ``TISSUE``) instead of hard-coding class numbers, so the label meaning
(including "255 = not annotated") cannot drift between training, strategies and the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE: int = 255
"""Voxel value of a partial label where nothing was annotated."""


@dataclass(frozen=True)
class LabelClass:
    value: int
    name: str
    key: str
    color: tuple[int, int, int]
    tissue: bool


# Colours follow the dHCP/Slicer convention loosely; they only need to be distinct and stable.
CLASSES: tuple[LabelClass, ...] = (
    LabelClass(0, "outer background", "background_outer", (0, 0, 0), False),
    LabelClass(1, "CSF", "csf", (120, 18, 134), True),
    LabelClass(2, "cortical grey matter", "cortical_gm", (220, 200, 60), True),
    LabelClass(3, "white matter", "white_matter", (245, 245, 245), True),
    LabelClass(4, "background (non-brain, inside head)", "background_inner", (90, 60, 50), False),
    LabelClass(5, "ventricles", "ventricles", (70, 130, 230), True),
    LabelClass(6, "cerebellum", "cerebellum", (230, 148, 34), True),
    LabelClass(7, "deep grey matter", "deep_gm", (0, 200, 120), True),
    LabelClass(8, "brainstem", "brainstem", (200, 40, 40), True),
    LabelClass(9, "hippocampus and amygdala", "hippocampus_amygdala", (220, 120, 200), True),
)

NUM_CLASSES: int = len(CLASSES)
OUTER_BACKGROUND: int = 0
INNER_BACKGROUND: int = 4
BACKGROUND: tuple[int, ...] = (OUTER_BACKGROUND, INNER_BACKGROUND)
TISSUE: tuple[int, ...] = tuple(c.value for c in CLASSES if c.tissue)
"""Classes averaged by the "tissue" metrics (everything except the two backgrounds)."""
BRAIN: tuple[int, ...] = TISSUE
"""Classes that make up the brain (used for brain extents and margins)."""
VALID_VALUES: frozenset[int] = frozenset([c.value for c in CLASSES] + [IGNORE])
FRAME: int = 254
"""Value of the frame that marks the assigned slices in the ``original`` label before a model exists:
not a class, so a frame left in an upload can never be mistaken for an annotation (it means "unpainted")."""
FRAME_NAME: str = "assigned slice (frame)"
LABEL_VERSION: str = "drawem9-v1"


class LabelError(ValueError):
    """A label array or file that breaks the contract; the message says what and where."""


def class_names() -> dict[int, str]:
    return {c.value: c.name for c in CLASSES}


def label_map() -> dict[str, int]:
    """``{key: value}`` as MONAI Label expects for ``labels`` (background included)."""
    return {c.key: c.value for c in CLASSES}


def slicer_label_map() -> dict[str, int]:
    """Classes 1–9 as the Slicer plugin numbers segments (sorted by value; it treats 0 as background)."""
    return {c.key: c.value for c in CLASSES if c.value != OUTER_BACKGROUND}


def is_frame_segment(name: str) -> bool:
    """Whether a Slicer segment name is the server's assignment frame (not a class)."""
    return str(name).strip().lower() == FRAME_NAME


def slicer_colors() -> dict[str, tuple[float, float, float]]:
    """``{key: (r, g, b)}`` in 0–1 for the Slicer plugin's label colour table."""
    return {c.key: tuple(round(v / 255.0, 4) for v in c.color) for c in CLASSES}


def class_table() -> list[dict]:
    """JSON-serialisable class table stored with checkpoints and shown in ``/info``."""
    return [
        {"value": c.value, "name": c.name, "key": c.key, "color": list(c.color), "tissue": c.tissue}
        for c in CLASSES
    ] + [{"value": IGNORE, "name": "not annotated", "key": "ignore", "color": [0, 0, 0], "tissue": False}]


def annotated_mask(label: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels that carry an annotation (``label != IGNORE``)."""
    return np.asarray(label) != IGNORE


def is_partial(label: np.ndarray) -> bool:
    return bool(np.any(np.asarray(label) == IGNORE))


def validate_label_values(label: np.ndarray, *, allow_ignore: bool = True, what: str = "label") -> None:
    """Raise :class:`LabelError` if ``label`` holds values other than 0–9 (and 255 if allowed)."""
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise LabelError(f"{what} contains NaN or infinite values")
        if not np.all(arr == np.round(arr)):
            raise LabelError(f"{what} contains non-integer values; labels must be integers 0–9 or {IGNORE}")
    elif arr.dtype.kind not in "iub":
        raise LabelError(f"{what} has dtype {arr.dtype}; expected an integer label volume")
    values = np.unique(arr)
    allowed = VALID_VALUES if allow_ignore else VALID_VALUES - {IGNORE}
    bad = [int(v) for v in values if int(v) not in allowed]
    if bad:
        shown = ", ".join(str(v) for v in bad[:10])
        allowed_text = f"0–{NUM_CLASSES - 1}" + (f" or {IGNORE} (not annotated)" if allow_ignore else "")
        raise LabelError(f"{what} contains values {shown} outside the drawem9 classes; allowed: {allowed_text}")


def validate_label(
    label: np.ndarray,
    *,
    image_shape: tuple[int, ...] | None = None,
    label_affine: np.ndarray | None = None,
    image_affine: np.ndarray | None = None,
    allow_ignore: bool = True,
    atol: float = 1e-3,
    what: str = "label",
) -> np.ndarray:
    """Check a label against the contract and return it as ``uint8``.

    Rejects values outside 0–9 (+255), a 3D shape that differs from the image's and an affine
    that differs from the image's (beyond ``atol`` mm), with a message a user can act on.
    """
    arr = np.asarray(label)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise LabelError(f"{what} must be a 3D volume, got shape {tuple(arr.shape)}")
    if image_shape is not None and tuple(arr.shape) != tuple(image_shape[:3]):
        raise LabelError(f"{what} shape {tuple(arr.shape)} does not match the image shape {tuple(image_shape[:3])}")
    if label_affine is not None and image_affine is not None:
        la, ia = np.asarray(label_affine, float), np.asarray(image_affine, float)
        if la.shape != (4, 4) or ia.shape != (4, 4):
            raise LabelError(f"{what} affine must be 4×4")
        if not np.allclose(la, ia, atol=atol):
            diff = float(np.abs(la - ia).max())
            raise LabelError(
                f"{what} affine does not match the image affine (max difference {diff:.4g}); "
                "the label must be saved in the image's voxel grid"
            )
    validate_label_values(arr, allow_ignore=allow_ignore, what=what)
    return arr.astype(np.uint8, copy=False)
