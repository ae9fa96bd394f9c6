"""Deleting through the API never destroys an annotator's work: files move to ``.neolabel/trash/``.

MONAI Label's ``DELETE /datastore/label`` and ``DELETE /datastore/image`` unlink files (for a dHCP
view the image's real file in the tree, through its link). neolabel instead moves what would be
lost — the label, for ``final`` also every raw submission behind it; for an image also its labels and
kept uploads — into ``<studies>/.neolabel/trash/<UTC time>-<image>[-<tag>]/``, keeping each file's
path relative to the study set (links stay links), with a ``manifest.json`` written *before* the first
move (what, who, when, from where). Restoring is moving the files back to the same relative paths
(:func:`plan_restore` + :func:`move_back`; for a label ``POST /neolabel/trash/{entry}/restore``), never
over a newer file.
Every deletion and restore is audited.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from strategies.annotate.db import AnnotationDB, audit
from strategies.annotate.state import STATE_DIR, now_iso
from training.data.nifti import atomic_write_text

MANIFEST = "manifest.json"


def trash_dir(studies: str | Path) -> Path:
    return Path(studies) / STATE_DIR / "trash"


def move_to_trash(studies: str | Path, paths: list[Path], name: str, detail: dict[str, Any], actor: str,
                  action: str, db: AnnotationDB | None) -> Path:
    """Move ``paths`` (files, links or folders inside ``studies``; missing ones skipped) into a new trash entry;
    its folder. The manifest comes first, so a crash half-way still says where every file came from."""
    root = Path(os.path.abspath(studies))  # abspath, not resolve: a link is moved as the link
    present = [Path(os.path.abspath(p)) for p in paths if p.is_symlink() or p.exists()]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    entry = trash_dir(root) / f"{stamp}-{name}"
    entry.mkdir(parents=True)
    rel = [str(p.relative_to(root)) for p in present]
    manifest = {**detail, "deleted_by": actor, "deleted_at": now_iso(), "files": rel,
                "restore": f"move each file back to the same path under {root}"}
    atomic_write_text(entry / MANIFEST, json.dumps(manifest, indent=2))
    for p, r in zip(present, rel, strict=True):
        dest = entry / "files" / r
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(p, dest)  # moves a link, not what it points to
        except OSError:
            shutil.move(str(p), str(dest))
    if db is not None:
        with db.transaction() as con:
            audit(con, actor, action, detail.get("image"),
                  {**detail, "trash": str(entry.relative_to(root)), "files": len(rel)})
    return entry


def list_trash(studies: str | Path) -> list[dict[str, Any]]:
    """Every trash entry's manifest, newest first (``GET /neolabel/trash``)."""
    out = []
    folder = trash_dir(studies)
    for m in sorted(folder.glob(f"*/{MANIFEST}"), reverse=True) if folder.is_dir() else []:
        try:
            out.append({"entry": m.parent.name, **json.loads(m.read_text())})
        except (OSError, ValueError):
            out.append({"entry": m.parent.name, "error": "unreadable manifest"})
    return out


class TrashError(Exception):
    """A trash entry that cannot be restored (``status``: the HTTP status to answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def read_entry(studies: str | Path, entry: str) -> tuple[Path, dict[str, Any]]:
    """The folder and manifest of the trash entry named ``entry`` (404 when there is none)."""
    folder = trash_dir(studies) / entry
    if not entry or entry != Path(entry).name or entry.startswith(".") or not (folder / MANIFEST).is_file():
        raise TrashError(f"no trash entry {entry!r} (GET /neolabel/trash lists them)", 404)
    try:
        return folder, json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise TrashError(f"trash entry {entry!r} has an unreadable manifest ({exc})", 409) from None


def _pairs(studies: Path, folder: Path, files: list[str]) -> list[tuple[Path, Path]]:
    """(file in the entry, where it goes back) for every file, link or file inside a folder of the entry."""
    out = []
    for rel in files:
        src = folder / "files" / rel
        if src.is_dir() and not src.is_symlink():
            out += [(f, studies / rel / f.relative_to(src)) for f in sorted(src.rglob("*"))
                    if f.is_symlink() or f.is_file()]
        elif src.is_symlink() or src.exists():
            out.append((src, studies / rel))
    return out


def plan_restore(studies: str | Path, folder: Path, manifest: dict[str, Any]) -> list[tuple[Path, Path]]:
    """(file in the entry, its old place) for every file of the entry; refused (409) when one of the places
    is taken again — a newer file is never overwritten — or the entry was restored already."""
    root = Path(os.path.abspath(studies))
    if manifest.get("restored_at"):
        raise TrashError(f"trash entry {folder.name!r} was restored at {manifest['restored_at']}", 409)
    pairs = _pairs(root, folder, list(manifest.get("files") or []))
    taken = [str(dest.relative_to(root)) for _src, dest in pairs if dest.is_symlink() or dest.exists()]
    if taken:
        raise TrashError(f"not restored: {', '.join(taken[:3])}{' …' if len(taken) > 3 else ''} exist(s) again "
                         "and would be overwritten", 409)
    return pairs


def move_back(pairs: list[tuple[Path, Path]]) -> int:
    """Move the files of :func:`plan_restore` back (the entry lies inside the study set: one file system)."""
    for src, dest in pairs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dest)  # moves a link, not what it points to
    return len(pairs)


def mark_restored(folder: Path, manifest: dict[str, Any], actor: str) -> None:
    """The manifest keeps the deletion's record and says who restored it when (the entry stays listed)."""
    atomic_write_text(folder / MANIFEST, json.dumps({**manifest, "restored_by": actor, "restored_at": now_iso()},
                                                    indent=2))
