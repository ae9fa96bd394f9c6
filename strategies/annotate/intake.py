"""Taking in a checked submission: keep the raw upload, convert, store the merged label, record it.

The order is what makes a crash lose nothing acknowledged: the raw upload is kept first (numbered,
never overwritten), then the merged partial label is written atomically, then the ledger records
it. A crash between label and ledger leaves the assignment open, and submitting the same slices
again merges to the same label (``merge_partial`` is idempotent). A well-formed upload with
painting of its own that is refused is kept under ``.neolabel/refused/<image>/`` with the reason:
an annotator's work is never lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np

from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.original import shown_path
from strategies.annotate.state import STATE_DIR, now_iso
from strategies.annotate.submission import (
    SubmissionRejected,
    SubmissionResult,
    check_submission,
    convert_submission,
    remap_segments,
)
from strategies.annotate.tags import FINAL, ORIGINAL
from training.data.labels import FRAME, IGNORE
from training.data.nifti import NiftiError, Volume, atomic_write_text, fsync_path, load_volume

log = logging.getLogger(__name__)

MAX_REFUSED_PER_IMAGE = 100


class LabelStore(Protocol):
    """What the intake needs of the datastore (MONAI Label's, in the app)."""

    def read_label(self, image_id: str, tag: str) -> np.ndarray | None: ...

    def store_label_array(self, image_id: str, data: np.ndarray, affine: np.ndarray, tag: str,
                          info: dict[str, Any] | None = None) -> str: ...

    def image_count(self) -> int: ...


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def count_uploads(folder: Path) -> int:
    """Kept uploads in a folder (``<nnnn>-<tag>.nii[.gz]``; temporary files and reason JSONs excluded)."""
    return len([p for p in folder.iterdir() if not p.name.startswith(".") and ".nii" in p.name])


class SubmissionIntake:
    """Accepts (or refuses, keeping the painting) one annotator's upload for one image."""

    def __init__(self, studies: str | Path, ledger: AnnotationLedger, store: LabelStore) -> None:
        self.ledger = ledger
        self.store = store
        self.submissions_dir = Path(studies) / STATE_DIR / "submissions"
        self.refused_dir = Path(studies) / STATE_DIR / "refused"
        self._root = Path(studies)
        self.lock = threading.Lock()  # one save at a time: read previous → merge → write (a restore holds it too)

    def keep_raw(self, image_id: str, src: str, tag: str, root: Path | None = None) -> Path:
        """Copy the upload verbatim to ``<root>/<image>/<nnnn>-<tag>.nii[.gz]`` (root: ``submissions``);
        never overwrites."""
        folder = (root or self.submissions_dir) / image_id
        folder.mkdir(parents=True, exist_ok=True)
        ext = ".nii.gz" if src.endswith(".gz") else ".nii"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=folder)
        os.close(fd)
        shutil.copyfile(src, tmp)
        fsync_path(tmp)  # the database row that points at this copy is committed right after
        try:
            # numbers continue past every submission the database has recorded: after a deleted final label
            # (its folder in the trash) a new upload never takes an old row's file name, and restoring the
            # trash entry cannot collide with it
            recorded = self.ledger.submission_count(image_id) if root is None else 0
            n = max(count_uploads(folder), recorded) + 1
            while True:
                dest = folder / f"{n:04d}-{tag}{ext}"
                try:
                    os.link(tmp, dest)  # fails if dest exists: earlier submissions are never replaced
                    fsync_path(folder)
                    return dest
                except FileExistsError:
                    n += 1
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _keep_refused(self, image_id: str, src: str, tag: str, data: np.ndarray, original: np.ndarray | None,
                      client_id: str, exc: SubmissionRejected) -> str | None:
        """Keep a refused upload that holds painting of its own (classes left as the server's ``original``
        label are not painting), at most ``MAX_REFUSED_PER_IMAGE`` per scan (disk bound)."""
        own = (data != 0) & (data != IGNORE)
        if original is not None and original.shape == data.shape:
            own &= data != original
        if not np.any(own):
            return None  # nothing painted: nothing to lose
        folder = self.refused_dir / image_id
        if folder.is_dir() and count_uploads(folder) >= MAX_REFUSED_PER_IMAGE:
            log.warning("refused label for %r not kept: %d already kept", image_id, MAX_REFUSED_PER_IMAGE)
            return None
        try:
            dest = self.keep_raw(image_id, src, tag, root=self.refused_dir)
            why = {"image": image_id, "tag": tag, "client_id": client_id, "refused_at": now_iso(),
                   "status": exc.status, "reason": str(exc)}
            atomic_write_text(dest.with_name(dest.name.split(".nii")[0] + ".json"), json.dumps(why, indent=2))
        except OSError as err:  # e.g. a full disk: the refusal stays a refusal, not a 500
            log.error("refused label for %r could not be kept: %s", image_id, err)
            return None
        return str(dest.relative_to(self._root))

    def _original_shown(self, image_id: str, holder: str | None) -> np.ndarray | None:
        """The ``original`` label handed out with the assignment a submission is judged against.

        The datastore's ``original`` is replaced whenever the scan is handed out, so after the holder's lease
        expired and the scan went to someone else it shows the newer assignment: the holder's own kept copy is
        used. Without that copy the datastore's serves only while it is still the holder's (the scan was last
        handed to them); otherwise the slices painted cannot be told from slices left as pre-segmented, and
        the submission is refused (409) rather than judged against someone else's assignment."""
        if holder is None:
            return self.store.read_label(image_id, ORIGINAL)
        try:
            return np.asarray(load_volume(shown_path(self._root, image_id, holder)).data).astype(np.uint8)
        except NiftiError:
            pass
        if self.ledger.last_granted_to(image_id) in (holder, None):
            return self.store.read_label(image_id, ORIGINAL)
        raise SubmissionRejected(
            f"{image_id} was handed to another annotator after your lease expired, and the server no longer has "
            "the 'original' label of your assignment to check your slices against; ask for Next Sample", 409)

    def _refuse(self, image_id: str, upload: str, tag: str, data: np.ndarray, original: np.ndarray | None,
                client_id: str, exc: SubmissionRejected) -> NoReturn:
        """Raise the refusal, saying where the painting was kept (when it holds any)."""
        kept = self._keep_refused(image_id, upload, tag, data, original, client_id, exc)
        if kept is None:
            raise exc
        raise SubmissionRejected(
            f"{exc}. Your painting was kept on the server as {kept} (not used for training)", exc.status
        ) from None

    def accept(self, image_id: str, upload: str, tag: str, label: Volume, image_shape: tuple[int, ...],
               affine: np.ndarray, label_info: Any, client_id: str,
               device: str | None = None) -> tuple[str, dict[str, Any]]:
        """Check and store an upload (Slicer's segment numbering mapped back to classes by ``label_info``);
        (label id, summary), or :class:`SubmissionRejected` with nothing changed. A ``final`` label is judged
        against the submitter's own assignment and the ``original`` label they were given with it, even when
        the scan has been handed to someone else since (:meth:`_original_shown`)."""
        with self.lock:
            assignments, holder = self.ledger.assignment_of(image_id, client_id) if tag == FINAL else (None, None)
            try:
                original = self._original_shown(image_id, holder)
            except SubmissionRejected as exc:
                self._refuse(image_id, upload, tag, np.asarray(label.data), None, client_id, exc)
            frame = original == FRAME if original is not None and original.shape == label.shape else None
            data = check_submission(remap_segments(label.data, label_info, frame), label.affine, image_shape, affine)
            if tag != FINAL:
                self.keep_raw(image_id, upload, tag)
                return self.store.store_label_array(image_id, data, affine, tag, {"client_id": client_id}), {}
            previous = self.store.read_label(image_id, FINAL)
            if previous is not None and previous.shape != data.shape:
                previous = None
            if frame is not None and frame.any():
                original = None  # a frame is no pre-segmentation (and never in `data`: it is no class)
            try:
                result = convert_submission(data, assignments, previous, original)
            except SubmissionRejected as exc:
                self._refuse(image_id, upload, tag, data, original, client_id, exc)
            label_id, summary = self._store_accepted(image_id, upload, tag, result, affine, client_id, device)
            if result.mode == "assignment" and holder is not None:
                shown_path(self._root, image_id, holder).unlink(missing_ok=True)  # the assignment is done
            return label_id, summary

    def _store_accepted(self, image_id: str, upload: str, tag: str, result: SubmissionResult, affine: np.ndarray,
                        client_id: str, device: str | None) -> tuple[str, dict[str, Any]]:
        """Raw upload kept, merged label written, ledger updated — in that order (see the module doc)."""
        raw = self.keep_raw(image_id, upload, tag)
        summary = result.summary()
        summary["raw_submission"] = str(raw.relative_to(self._root))
        summary["raw_sha256"] = sha256_file(raw)
        summary["client_id"] = client_id
        if device:
            summary["device_id"] = device  # the plugin's client id: a note, the identity is client_id
        summary["saved_at"] = now_iso()
        label_id = self.store.store_label_array(
            image_id, result.partial, affine, FINAL,
            {"partial": bool(np.any(result.partial == IGNORE)), "annotated_voxels": result.annotated_voxels,
             "client_id": client_id},
        )
        summary.update(self.ledger.on_accepted(image_id, result, client_id, summary))
        summary["budget"] = self.ledger.budget_status(self.store.image_count())
        return label_id, summary
