"""Make a study set servable by MONAI Label's local datastore.

MONAI Label serves a flat folder (``<id>.nii.gz`` + ``labels/<tag>/<id>.nii.gz``). A plain folder
is served as it is. A dHCP tree (``sub-*/ses-*/anat``) is served through a view,
``<tree>/.neolabel/studies/``: one link per session to its bias-corrected T2w image and its brain
mask as the ``brain_mask`` label (used to keep assigned slices inside the brain). The tree's
dense labels are never linked, so the served scans start unlabelled and the tree stays untouched.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class StudiesError(ValueError):
    """A ``--studies`` path that cannot be served."""


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        if dst.resolve() == src.resolve():
            return
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # file systems without symlinks: copy
        shutil.copyfile(src, dst)


def _ext(p: Path) -> str:
    return ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"


def servable_studies(path: str | Path) -> Path:
    """The folder to hand MONAI Label for ``path`` (a dHCP tree gets a view, see module doc)."""
    from training.data.dataset import DatasetError, open_dataset

    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise StudiesError(f"--studies {path}: no such folder")
    if not root.is_dir():
        raise StudiesError(f"--studies {path}: not a folder")
    if not any(p.is_dir() for p in root.glob("sub-*")):
        return root  # a MONAI Label folder (possibly empty: images can be uploaded)
    try:
        ds = open_dataset(root)
    except DatasetError as exc:
        raise StudiesError(f"--studies {path}: {exc}") from None
    view = root / ".neolabel" / "studies"
    view.mkdir(parents=True, exist_ok=True)
    for s in ds.subjects:
        _link(s.image, view / f"{s.id}{_ext(s.image)}")
        if s.brain_mask is not None:
            _link(s.brain_mask, view / "labels" / "brain_mask" / f"{s.id}{_ext(s.brain_mask)}")
    return view
