"""The ``original`` label: how an assignment becomes visible in the stock Slicer plugin.

The plugin only loads the scan; it cannot jump to slices. So the server writes an ``original``
label holding the model's pre-segmentation on the assigned slices only (0 elsewhere), or, before a
model exists, a frame around each assigned slice, drawn with ``labels.FRAME``: a value that is no
class, so a frame the annotator leaves in place is never stored as an annotation.

The datastore keeps one ``original`` per scan, replaced whenever the scan is handed out. The one each
annotator was given is also kept (:func:`keep_shown`), so that a late submission — after the lease
expired and the scan went to someone else — is judged against what its annotator saw.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from strategies.annotate.masks import assignment_mask
from strategies.annotate.state import STATE_DIR
from strategies.plan.assignment import SliceAssignment
from training.data.labels import FRAME, FRAME_NAME, slicer_label_map


def original_label(shape: Sequence[int], assignments: list[SliceAssignment],
                   prediction: np.ndarray | None) -> tuple[np.ndarray, str]:
    """(label, kind): the pre-segmentation on the assigned slices, or a frame around each (``kind`` "frame")."""
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)
    if prediction is not None:
        mask = assignment_mask(shape, assignments)
        out[mask] = prediction[mask]
        return out, "pre-segmentation"
    for x in assignments:
        for i in x.indices:
            sl: list[Any] = [slice(None)] * 3
            sl[x.voxel_axis] = i
            plane = out[tuple(sl)]
            plane[0, :] = plane[-1, :] = plane[:, 0] = plane[:, -1] = FRAME
    return out, "frame"


def original_label_names(kind: str) -> dict[str, int]:
    """Segment names of the ``original`` label for the Slicer plugin (the frame gets its own segment)."""
    names = slicer_label_map()
    if kind == "frame":
        names[FRAME_NAME] = FRAME
    return names


def instruction(image_id: str, assignments: list[SliceAssignment], original: str) -> str:
    """The sentence the next-sample answer carries for the annotator."""
    parts = "; ".join(
        f"{x.axis} slices {', '.join(str(i) for i in x.indices)} (voxel axis {x.voxel_axis})" for x in assignments
    )
    shown = ("the 'original' label shows the model's pre-segmentation on them" if original == "pre-segmentation"
             else "the 'original' label frames them")
    return (f"Label {parts} of {image_id} completely (every voxel of each slice); {shown}. "
            "Paint elsewhere is ignored; unpainted assigned slices return to the budget.")


def shown_dir(studies: str | Path, image_id: str) -> Path:
    """The ``original`` labels handed out with assignments of ``image_id``, one file per annotator."""
    return Path(studies) / STATE_DIR / "shown" / image_id


def shown_path(studies: str | Path, image_id: str, client_id: str) -> Path:
    """Where the ``original`` label handed to ``client_id`` with its assignment of ``image_id`` is kept."""
    key = hashlib.sha256(client_id.encode()).hexdigest()[:16]  # client ids are user names, e-mails, device ids
    return shown_dir(studies, image_id) / f"{key}.nii.gz"


def keep_shown(label_file: str | Path, dest: Path) -> None:
    """Keep the datastore's ``original`` file as ``dest``: a hard link, since the datastore replaces the file
    (``os.replace``) rather than rewriting it; a copy where links are not supported."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex}{dest.name}")
    try:
        os.link(label_file, tmp)
    except OSError:
        shutil.copyfile(label_file, tmp)
    os.replace(tmp, dest)
