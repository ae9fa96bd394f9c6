"""Deleting through the API never destroys an annotator's work: files move to ``.neolabel/trash/``.

MONAI Label's ``DELETE /datastore/label`` and ``DELETE /datastore/image`` unlink files (for a dHCP
view the image's real file in the tree, through its link). neolabel instead moves what would be
lost — the label, for ``final`` also every raw submission behind it; for an image also its labels and
kept uploads — into ``<studies>/.neolabel/trash/<UTC time>-<image>[-<tag>]/``, keeping each file's
path relative to the study set (links stay links), with a ``manifest.json`` written *before* the first
move (what, who, when, from where). Restoring is moving the files back to the same relative paths.
Every deletion is audited.
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
