"""MONAI Label's local datastore with neolabel's label contract enforced at ``PUT /datastore/label``.

MONAI Label's endpoint calls ``datastore.save_label(image, tmp_file, tag, params)`` and then
``app.on_save_label(image, label_id)``; an exception in between becomes a 500. This subclass
therefore checks the upload first (id and tag syntax, known image, readable NIfTI, shape, affine,
values 0–9/255, a non-empty submission for an open assignment) and answers a refusal with an
``HTTPException`` carrying a 4xx status and a message, having changed nothing in the datastore (a
well-formed upload with painted classes that cannot be taken, e.g. without an open assignment, is
kept under ``.neolabel/refused/<image>/`` with the reason, so no annotator's work is lost). Accepted
uploads go to the annotation core (``strategies.annotate.intake``): kept verbatim, converted to a
partial label merged with the earlier rounds, written atomically, recorded.
The datastore JSON is also replaced atomically (MONAI Label rewrites it in place).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from filelock import FileLock
from monailabel.datastore.local import DataModel, LocalDatastore

from neonatal_app.lib.auth import acting_client, require
from neonatal_app.lib.trash import (
    TrashError,
    list_trash,
    mark_restored,
    move_back,
    move_to_trash,
    plan_restore,
    read_entry,
)
from strategies.annotate.db import audit
from strategies.annotate.intake import SubmissionIntake, sha256_file
from strategies.annotate.ledger import AnnotationLedger
from strategies.annotate.original import shown_dir
from strategies.annotate.submission import ANONYMOUS, SubmissionRejected
from strategies.annotate.tags import FINAL, RESERVED
from strategies.annotate.users import CONFIGURE
from training.data.labels import IGNORE
from training.data.nifti import NiftiError, Volume, atomic_write_text, load_volume, read_header, save_volume

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def http_error(status: int, message: str) -> Exception:
    """FastAPI's HTTPException with the refusal's status and message."""
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

    def __init__(self, studies: str | Path, ledger: AnnotationLedger, max_upload_mb: float = 512.0) -> None:
        """Accepted uploads go through the annotation core's ``SubmissionIntake`` over this datastore."""
        self._local = threading.local()
        self._registry_lock = threading.Lock()
        self._status: dict[str, Any] | None = None
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        super().__init__(
            str(studies),
            extensions=("*.nii.gz", "*.nii"),
            auto_reload=False,  # a watchdog thread reloading the JSON under a running save loses updates
            read_only=False,
        )
        self.intake = SubmissionIntake(studies, ledger, store=self)
        self._db = ledger.db  # deletions are audited
        self._release_unlabelled()

    def _release_unlabelled(self) -> None:
        """Finish a ``final`` deletion that a crash interrupted: the label is in the trash and its slices are
        still spent. Only a scan with such a trash entry is released (an imported state may hold slices
        whose labels were never copied in; those stay spent)."""
        unlabelled = [i for i in self.intake.ledger.images_with_spent_slices() if i in self._datastore.objects
                      and not (self.label_path(i, FINAL).is_file() or os.path.isfile(self.get_label_uri(i, FINAL)))]
        if unlabelled:  # the manifests say exactly which image and tag each entry holds (names can be ambiguous)
            trashed = {m.get("image") for m in list_trash(self._datastore_path)
                       if m.get("tag") == FINAL and not m.get("restored_at")}
            for image_id in (i for i in unlabelled if i in trashed):
                freed = self.intake.ledger.release_annotations(image_id, "startup-repair")
                log.warning("%s: final label missing, %d spent slice(s) released", image_id, freed)

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
                          info: dict[str, Any] | None = None, durable: bool = True) -> str:
        """Write a label atomically (durable on return) and register it in memory (internal use: no checks).

        The datastore JSON is not rewritten: at 10,000 scans that costs ~0.25 s a save. MONAI Label
        finds label files on disk when a datastore is opened (``_reconcile_datastore``), and what
        neolabel needs to know about a label lives in the annotation database."""
        check_tag(tag)
        dest = self.label_path(image_id, tag)
        save_volume(dest, np.asarray(data, dtype=np.uint8), affine, dtype=np.uint8, durable=durable)
        with self._registry_lock:
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
            if old is None and self._status is not None:
                tags = self._status["label_tags"]
                tags[tag] = tags.get(tag, 0) + 1
                self._status["completed"] += int(tag == FINAL)
            obj.labels[tag] = DataModel(info=label_info, ext=".nii.gz")
        return image_id

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """In memory only: MONAI Label stamps the image at every next sample, and rewriting the datastore
        JSON for that is O(scans) per request (what it records is not needed across restarts)."""
        with self._registry_lock:
            obj = self._datastore.objects.get(image_id)
            if obj is not None:
                obj.image.info.update(info)

    def status(self) -> dict[str, Any]:
        """Image and label counts for ``/info`` (MONAI Label asks at every next sample): counted once,
        then kept up to date as labels are stored, instead of a pass over every scan per request."""
        with self._registry_lock:
            if self._status is None:
                self._status = super().status()
            return {**self._status, "label_tags": dict(self._status["label_tags"])}

    def _refresh_status(self) -> None:
        with self._registry_lock:
            self._status = None

    def image_count(self) -> int:
        return len(self._datastore.objects)

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
        out = super().add_image(image_id, image_filename, image_info)
        self._refresh_status()
        return out

    def remove_image(self, image_id: str) -> None:
        """``DELETE /datastore/image`` (admin): the scan (a link stays a link), its labels and its kept uploads
        move to the trash (``neonatal_app.lib.trash``); MONAI Label would unlink the tree's own file."""
        obj = self._known(image_id)
        paths = [Path(self._datastore.image_path()) / self._filename(image_id, obj.image.ext)]
        paths += [self._label_file(image_id, tag) for tag in obj.labels]
        paths += [self.intake.submissions_dir / image_id, self.intake.refused_dir / image_id,
                  shown_dir(self._datastore_path, image_id)]
        with self.intake.lock:  # not while a save or a restore of it runs
            self._trash(image_id, None, paths, "image.delete")
            with self._registry_lock:
                self._datastore.objects.pop(image_id, None)
            self._update_datastore_file()
            self.intake.ledger.forget_image(image_id)
        self._refresh_status()

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """``DELETE /datastore/label`` (admin): the label moves to the trash, for ``final`` with every raw
        submission it was merged from, so nothing an annotator painted is lost; a ``final`` label's slices
        are then no longer spent and the scan can be annotated again (``AnnotationLedger.release_annotations``)."""
        obj = self._known(label_id)
        tag = self._checked(check_tag, label_tag)
        if tag not in obj.labels:
            raise http_error(404, f"image {label_id!r} has no {tag!r} label")
        paths = [self._label_file(label_id, tag)]
        extra = {}
        with self.intake.lock:  # no save of this scan between the snapshot of its slices and their release
            if tag == FINAL:
                paths.append(self.intake.submissions_dir / label_id)
                extra["annotations"] = self.intake.ledger.annotations_of(label_id)  # counted again on restore
            extra["image_sha256"] = sha256_file(self.get_image_uri(label_id))  # the scan it was drawn on
            self._trash(label_id, tag, paths, "label.delete", extra)
            with self._registry_lock:
                obj.labels.pop(tag, None)
            self._update_datastore_file()
            if tag == FINAL:
                self.intake.ledger.release_annotations(label_id, acting_client(None) or ANONYMOUS)
        self._refresh_status()

    def _checked(self, check: Any, value: Any, *args: Any) -> Any:
        try:
            return check(value, *args)
        except SubmissionRejected as exc:
            raise http_error(exc.status, str(exc)) from None

    def _known(self, image_id: str) -> Any:
        self._checked(check_id, image_id, "image id")
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise http_error(404, f"unknown image {image_id!r}: it is not in this study set")
        return obj

    def _label_file(self, image_id: str, tag: str) -> Path:
        """The label's path as stored (not resolved: a dHCP view's brain mask is a link into the tree)."""
        ext = self._datastore.objects[image_id].labels[tag].ext
        return Path(self._datastore.label_path(tag)) / self._filename(image_id, ext)

    def _trash(self, image_id: str, tag: str | None, paths: list[Path], action: str,
               extra: dict[str, Any] | None = None) -> None:
        actor = acting_client(None) or ANONYMOUS
        name = image_id if tag is None else f"{image_id}-{tag}"
        entry = move_to_trash(self._datastore_path, paths, name, {"image": image_id, "tag": tag, **(extra or {})},
                              actor, action, self._db)
        log.warning("%s: %s %s moved to %s", actor, image_id, tag or "(image)", entry)

    def restore_label(self, entry: str) -> dict[str, Any]:
        """``POST /neolabel/trash/{entry}/restore`` (admin): a deleted label back in place, a ``final`` label's
        slices spent again — unless something newer took its place (409, nothing changed). Slices first,
        files second: a crash in between leaves slices spent without their label, which the next start
        releases again (``_release_unlabelled``), as after an interrupted deletion; a failure in between is
        undone here."""
        actor = acting_client(None) or ANONYMOUS
        try:
            folder, manifest = read_entry(self._datastore_path, entry)
            image_id, tag = manifest.get("image"), manifest.get("tag")
            if tag is None:
                raise TrashError(f"{entry!r} holds a deleted scan: add it again (PUT /datastore/image) or move its "
                                 "files back by hand, as its manifest lists them", 409)
            obj = self._known(image_id)
            drawn_on = manifest.get("image_sha256")
            if drawn_on is not None and drawn_on != sha256_file(self.get_image_uri(image_id)):
                raise TrashError(f"{image_id} is another scan than the one this label was drawn on (the image was "
                                 "replaced since the deletion): not restored", 409)
            name = self._trashed_label_name(image_id, tag, folder, manifest)
            saved = manifest.get("annotations")
            if tag == FINAL and saved is None:
                raise TrashError(f"{entry!r} was deleted before deletions kept the label's slices: move its files "
                                 "back by hand (its slices are then not counted)", 409)
            with self.intake.lock:  # no submission of this scan in between
                if tag in obj.labels or (Path(self._datastore.label_path(tag)) / name).exists():
                    raise TrashError(f"{image_id} has a {tag!r} label again; the deleted one is not restored over it",
                                     409)
                pairs = plan_restore(self._datastore_path, folder, manifest)
                counted = self.intake.ledger.restore_annotations(image_id, saved, actor) if tag == FINAL else 0
                try:
                    moved = move_back(pairs)
                    self._register_label(image_id, tag, name)
                except BaseException:
                    self._undo_restore(image_id, tag, pairs, tag == FINAL, actor)
                    raise
        except (TrashError, SubmissionRejected) as exc:
            raise http_error(exc.status, str(exc)) from None
        self._refresh_status()
        try:  # the restore is done: a failure to record it is logged, not answered as a failed restore
            mark_restored(folder, manifest, actor)
            with self._db.transaction() as con:
                audit(con, actor, "label.restore", image_id, {"tag": tag, "trash": entry, "files": moved,
                                                             "slices": counted})
        except Exception:
            log.exception("%s: restore of %s (%s) done, but its record failed", actor, image_id, entry)
        return {"image": image_id, "tag": tag, "files": moved, "slices_counted": counted}

    def _trashed_label_name(self, image_id: str, tag: str, folder: Path, manifest: dict[str, Any]) -> str:
        """The label file's name (with the extension it had) among the entry's files; 409 when it is not there."""
        labels = Path(os.path.relpath(self._datastore.label_path(tag), os.path.abspath(self._datastore_path)))
        for f in manifest.get("files") or []:
            rel = Path(f)
            if rel.parent == labels and rel.name.startswith(image_id + ".") and (folder / "files" / rel).is_file():
                return rel.name
        raise TrashError(f"the trash entry {folder.name!r} holds no {tag!r} label file of {image_id}", 409)

    def _register_label(self, image_id: str, tag: str, name: str) -> None:
        """The restored label file in the registry (and the datastore JSON), under the extension it had."""
        with self._registry_lock:
            self._datastore.objects[image_id].labels[tag] = DataModel(
                info={"ts": int(time.time()), "name": name}, ext=name[len(image_id):])
        self._update_datastore_file()

    def _undo_restore(self, image_id: str, tag: str, pairs: list[tuple[Path, Path]], release: bool,
                      actor: str) -> None:
        """A restore that failed half-way: counted slices are freed, files that moved go back into the entry.
        Each step on its own: what cannot be undone is logged, and the original error is what the caller sees."""
        steps = [lambda: self.intake.ledger.release_annotations(image_id, actor)] if release else []
        steps += [lambda s=src, d=dest: os.rename(d, s) for src, dest in pairs
                  if (dest.exists() or dest.is_symlink()) and not (src.exists() or src.is_symlink())]
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("undoing the restore of %s (%s): a step failed", image_id, tag)
        with self._registry_lock:
            obj = self._datastore.objects.get(image_id)
            if obj is not None:
                obj.labels.pop(tag, None)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        try:
            return self._save_label(image_id, label_filename, label_tag or FINAL, label_info or {})
        except SubmissionRejected as exc:
            log.warning("label for %r refused (%d): %s", image_id, exc.status, exc)
            raise http_error(exc.status, str(exc)) from None

    def _read_upload(self, path: str, image_shape: tuple[int, ...]) -> Volume:
        """The uploaded label, refused cheaply before any voxel is read when it is too large or its
        header does not describe the image's grid (a 1 kB header may claim 2000³ voxels)."""
        size = os.path.getsize(path)
        if size > self.max_upload_bytes:
            raise SubmissionRejected(
                f"upload of {size / 2**20:.1f} MiB is larger than the limit of {self.max_upload_bytes / 2**20:.0f} MiB "
                "(--conf max_upload_mb)", 413)
        try:
            header_shape, _ = read_header(path)
            if tuple(header_shape[:3]) != tuple(image_shape) or any(int(s) != 1 for s in header_shape[3:]):
                raise SubmissionRejected(
                    f"submitted label shape {tuple(header_shape)} does not match the image shape {tuple(image_shape)}",
                    400)
            return load_volume(path)
        except NiftiError as exc:
            msg = str(exc).replace(str(path), "uploaded label")
            raise SubmissionRejected(f"corrupt or non-NIfTI label: {msg}", 400) from None

    def _save_label(self, image_id: str, label_filename: str, tag: str, info: dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_tag(tag)
        if tag in RESERVED:
            raise SubmissionRejected(f"the {tag!r} label is written by the server; submit annotations as 'final'", 400)
        image = self.image_path(image_id)
        name = os.path.basename(str(label_filename))
        if not (name.endswith(".nii.gz") or name.endswith(".nii")):
            raise SubmissionRejected(f"unsupported label file {name!r}: upload a NIfTI file (.nii or .nii.gz)", 415)
        shape, affine = read_header(image)
        vol = self._read_upload(label_filename, shape)
        if np.any(np.asarray(vol.data) == IGNORE):
            # taken as is, without an assignment, newer winning: a bulk import, not an annotator's job
            require(CONFIGURE, "a partial-label import (voxels of 255)")
        # logged in: the user is who submitted (the plugin's client id is only a device note); else the client id
        device = info.get("client_id") or info.get("user")
        client_id = acting_client(device) or ANONYMOUS
        label_id, summary = self.intake.accept(image_id, label_filename, tag, vol, shape, affine,
                                               info.get("label_info"), client_id,
                                               device=device if device != client_id else None)
        if summary:
            if not hasattr(self._local, "summaries"):
                self._local.summaries = {}
            self._local.summaries[image_id] = summary
        return label_id

