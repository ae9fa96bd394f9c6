"""MONAI Label's local datastore with neolabel's label contract enforced at ``PUT /datastore/label``.

MONAI Label's endpoint calls ``datastore.save_label(image, tmp_file, tag, params)`` and then
``app.on_save_label(image, label_id)``; an exception in between becomes a 500. This subclass
therefore checks the upload first (id and tag syntax, known image, readable NIfTI, shape, affine,
values 0–9/255, a non-empty submission for an open assignment) and answers a refusal with an
``HTTPException`` carrying a 4xx status and a message, having changed nothing in the datastore (a
well-formed upload with painted classes that cannot be taken, e.g. without an open assignment, is
kept under ``.neolabel/refused/<image>/`` with the reason, so no annotator's work is lost). Accepted
uploads are kept verbatim under ``.neolabel/submissions/<image>/`` (numbered, never overwritten),
converted to a partial label (``lib/submission.py``) merged with the earlier rounds, and written
atomically. The datastore JSON is also replaced atomically (MONAI Label rewrites it in place).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore

from strategies.annotate.state import STATE_DIR, StateStore, now_iso
from strategies.annotate.submission import (
    ANONYMOUS,
    SubmissionRejected,
    check_submission,
    convert_submission,
    remap_segments,
)
from training.data.labels import IGNORE
from training.data.nifti import NiftiError, atomic_write_text, load_volume, read_header, save_volume

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
FINAL = "final"
ORIGINAL = "original"
BRAIN_MASK_TAG = "brain_mask"
RESERVED_TAGS = (ORIGINAL, BRAIN_MASK_TAG)
MAX_REFUSED_PER_IMAGE = 100


def _count_uploads(folder: Path) -> int:
    """Kept uploads in a folder (``<nnnn>-<tag>.nii[.gz]``; temporary files and reason JSONs excluded)."""
    return len([p for p in folder.iterdir() if not p.name.startswith(".") and ".nii" in p.name])


def http_error(status: int, message: str) -> Exception:
    """FastAPI's HTTPException (imported lazily so this module stays importable without a server)."""
    from fastapi import HTTPException

    return HTTPException(status_code=status, detail=message)


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not ID_RE.match(value) or ".." in value:
        raise SubmissionRejected(
            f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-' (no path separators or '..')", 400
        )
    return value


def check_tag(value: str) -> str:
    if not isinstance(value, str) or not TAG_RE.match(value):
        raise SubmissionRejected(f"invalid label tag {value!r}: use letters, digits, '_' or '-'", 400)
    return value


class NeolabelDatastore(LocalDatastore):
    """``LocalDatastore`` + validated, converted, versioned label saves (see module doc)."""

    def __init__(self, studies: str | Path, state: StateStore, assignments_for, on_accepted=None) -> None:
        """``assignments_for(image_id) -> list[SliceAssignment] | None`` gives the open assignment;
        ``on_accepted(image_id, result, client_id)`` records an accepted submission in the state."""
        self.state = state
        self._assignments_for = assignments_for
        self._on_accepted = on_accepted
        self._local = threading.local()
        self._save_lock = threading.Lock()
        super().__init__(
            str(studies),
            extensions=("*.nii.gz", "*.nii"),
            auto_reload=False,  # a watchdog thread reloading the JSON under a running save loses updates
            read_only=False,
        )
        self.submissions_dir = Path(studies) / STATE_DIR / "submissions"
        self.refused_dir = Path(studies) / STATE_DIR / "refused"

    # -------------------------------------------------------------- atomic datastore JSON
    def _update_datastore_file(self, lock: bool = True) -> None:
        def write() -> None:
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(self._datastore_config_path, text)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    # -------------------------------------------------------------- helpers
    def image_path(self, image_id: str) -> Path:
        uri = self.get_image_uri(image_id)
        if not uri:
            raise SubmissionRejected(f"unknown image {image_id!r}: it is not in this study set", 404)
        return Path(uri)

    def label_path(self, image_id: str, tag: str) -> Path:
        return Path(self._datastore.label_path(tag)) / f"{image_id}.nii.gz"

    def read_label(self, image_id: str, tag: str) -> np.ndarray | None:
        uri = self.get_label_uri(image_id, tag)
        if not uri or not os.path.isfile(uri):
            return None
        return np.asarray(load_volume(uri).data).astype(np.uint8)

    def store_label_array(self, image_id: str, data: np.ndarray, affine: np.ndarray, tag: str,
                          info: dict[str, Any] | None = None) -> str:
        """Write a label atomically and register it (internal use: no submission checks)."""
        check_tag(tag)
        dest = self.label_path(image_id, tag)
        save_volume(dest, np.asarray(data, dtype=np.uint8), affine, dtype=np.uint8)
        with FileLock(self._lock_file):
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                raise SubmissionRejected(f"unknown image {image_id!r}", 404)
            old = obj.labels.get(tag)
            if old is not None and old.ext != ".nii.gz":  # a label imported with another extension
                stale = Path(self._datastore.label_path(tag)) / f"{image_id}{old.ext}"
                if stale != dest:
                    stale.unlink(missing_ok=True)
            label_info = dict(info or {})
            label_info["ts"] = int(time.time())
            label_info["name"] = dest.name
            obj.labels[tag] = DataModel(info=label_info, ext=".nii.gz")
            self._update_datastore_file(lock=False)
        return image_id

    def _keep_raw(self, image_id: str, src: str, tag: str, root: Path | None = None) -> Path:
        """Copy the upload verbatim to ``<root>/<image>/<nnnn>-<tag>.nii[.gz]`` (root: ``submissions``);
        never overwrites."""
        folder = (root or self.submissions_dir) / image_id
        folder.mkdir(parents=True, exist_ok=True)
        ext = ".nii.gz" if src.endswith(".gz") else ".nii"
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=ext, dir=folder)
        os.close(fd)
        shutil.copyfile(src, tmp)
        try:
            n = _count_uploads(folder) + 1
            while True:
                dest = folder / f"{n:04d}-{tag}{ext}"
                try:
                    os.link(tmp, dest)  # fails if dest exists: earlier submissions are never replaced
                    return dest
                except FileExistsError:
                    n += 1
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _keep_refused(self, image_id: str, src: str, tag: str, data: np.ndarray, original: np.ndarray | None,
                      client_id: str, exc: SubmissionRejected) -> str | None:
        """Keep a well-formed upload with painting of its own that was refused (no open assignment,
        nothing on the assigned slices) under ``.neolabel/refused/<image>/``, with the reason beside it:
        an annotator's work is never lost. Classes left as the server's ``original`` label are not
        painting. At most ``MAX_REFUSED_PER_IMAGE`` per scan (disk bound)."""
        own = (data != 0) & (data != IGNORE)
        if original is not None and original.shape == data.shape:
            own &= data != original
        if not np.any(own):
            return None  # nothing painted: nothing to lose
        folder = self.refused_dir / image_id
        if folder.is_dir() and _count_uploads(folder) >= MAX_REFUSED_PER_IMAGE:
            log.warning("refused label for %r not kept: %d already kept", image_id, MAX_REFUSED_PER_IMAGE)
            return None
        try:
            dest = self._keep_raw(image_id, src, tag, root=self.refused_dir)
            why = {"image": image_id, "tag": tag, "client_id": client_id, "refused_at": now_iso(),
                   "status": exc.status, "reason": str(exc)}
            atomic_write_text(dest.with_name(dest.name.split(".nii")[0] + ".json"), json.dumps(why, indent=2))
        except OSError as err:  # e.g. a full disk: the refusal stays a refusal, not a 500
            log.error("refused label for %r could not be kept: %s", image_id, err)
            return None
        return str(dest.relative_to(self.refused_dir.parent.parent))

    def pop_last_summary(self, image_id: str) -> dict[str, Any] | None:
        summary = getattr(self._local, "summaries", {}).pop(image_id, None)
        return summary

    # -------------------------------------------------------------- the endpoints' hooks
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """``PUT /datastore/image``: a new, valid 3D NIfTI under a safe, unused id (never overwrites a scan)."""
        try:
            name = os.path.basename(str(image_filename))
            if not (name.endswith(".nii.gz") or name.endswith(".nii")):
                raise SubmissionRejected(f"unsupported image file {name!r}: upload a NIfTI file (.nii or .nii.gz)", 415)
            image_id = check_id(image_id or name.split(".nii")[0], "image id")
            if image_id in self._datastore.objects:
                raise SubmissionRejected(f"image {image_id!r} already exists; scans are never overwritten", 409)
            try:
                read_header(image_filename)
            except NiftiError as exc:
                msg = str(exc).replace(str(image_filename), "uploaded image")
                raise SubmissionRejected(f"corrupt or non-NIfTI image: {msg}", 400) from None
        except SubmissionRejected as exc:
            raise http_error(exc.status, str(exc)) from None
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        try:
            return self._save_label(image_id, label_filename, label_tag or FINAL, label_info or {})
        except SubmissionRejected as exc:
            log.warning("label for %r refused (%d): %s", image_id, exc.status, exc)
            raise http_error(exc.status, str(exc)) from None

    def _save_label(self, image_id: str, label_filename: str, tag: str, info: dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_tag(tag)
        if tag in RESERVED_TAGS:
            raise SubmissionRejected(f"the {tag!r} label is written by the server; submit annotations as 'final'", 400)
        image = self.image_path(image_id)
        name = os.path.basename(str(label_filename))
        if not (name.endswith(".nii.gz") or name.endswith(".nii")):
            raise SubmissionRejected(f"unsupported label file {name!r}: upload a NIfTI file (.nii or .nii.gz)", 415)
        try:
            vol = load_volume(label_filename)
        except NiftiError as exc:
            msg = str(exc).replace(str(label_filename), "uploaded label")
            raise SubmissionRejected(f"corrupt or non-NIfTI label: {msg}", 400) from None
        shape, affine = read_header(image)
        data = check_submission(remap_segments(vol.data, info.get("label_info")), vol.affine, shape, affine)
        client_id = str(info.get("client_id") or info.get("user") or ANONYMOUS)

        with self._save_lock:
            if tag != FINAL:
                self._keep_raw(image_id, label_filename, tag)
                return self.store_label_array(image_id, data, affine, tag, {"client_id": client_id})
            previous = self.read_label(image_id, FINAL)
            if previous is not None and previous.shape != data.shape:
                previous = None
            assignments = self._assignments_for(image_id, client_id)
            original = self.read_label(image_id, ORIGINAL)
            frame = original is not None and self.get_label_info(image_id, ORIGINAL).get("kind") == "frame"
            try:
                result = convert_submission(data, assignments, previous, original, original_is_frame=frame)
            except SubmissionRejected as exc:
                kept = self._keep_refused(image_id, label_filename, tag, data, original, client_id, exc)
                if kept is None:
                    raise
                raise SubmissionRejected(
                    f"{exc}. Your painting was kept on the server as {kept} (not used for training)",
                    exc.status,
                ) from None
            raw = self._keep_raw(image_id, label_filename, tag)
            summary = result.summary()
            summary["raw_submission"] = str(raw.relative_to(self.submissions_dir.parent.parent))
            summary["client_id"] = client_id
            summary["saved_at"] = now_iso()
            # label first, state second: a crash in between leaves the assignment open, and submitting
            # the same slices again merges to the same label (merge_partial is idempotent)
            label_id = self.store_label_array(
                image_id,
                result.partial,
                affine,
                FINAL,
                {"partial": bool(np.any(result.partial == IGNORE)), "annotated_voxels": result.annotated_voxels,
                 "client_id": client_id},
            )
            if self._on_accepted is not None:
                summary.update(self._on_accepted(image_id, result, client_id, summary) or {})
            if not hasattr(self._local, "summaries"):
                self._local.summaries = {}
            self._local.summaries[image_id] = summary
            return label_id

