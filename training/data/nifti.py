"""NIfTI reading and atomic writing.

Writes go to a temporary file in the target folder and are renamed into place, so a crash in the
middle of a save leaves the previous file intact (an annotator's work is never half-written).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


class NiftiError(ValueError):
    """A file that is missing, unreadable or not a 3D NIfTI volume."""


@dataclass
class Volume:
    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine without loading the voxel data."""
    img = _open(path)
    return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=float)


def load_volume(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> Volume:
    """Load a 3D volume (a trailing singleton 4th axis is dropped); clear error if it is not one."""
    img = _open(path)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # truncated gzip, bad data block, ...
        raise NiftiError(f"{path}: cannot read voxel data ({exc})") from exc
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NiftiError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Volume(np.asarray(data), np.asarray(img.affine, dtype=float))


def _open(path: str | os.PathLike) -> nib.Nifti1Image:
    p = Path(path)
    if not p.is_file():
        raise NiftiError(f"{p}: file not found")
    try:
        img = nib.load(str(p))
    except Exception as exc:
        raise NiftiError(f"{p}: not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiError(f"{p}: not a NIfTI image ({type(img).__name__})")
    if len(img.shape) not in (3, 4) or (len(img.shape) == 4 and img.shape[3] != 1):
        raise NiftiError(f"{p}: expected a 3D volume, got shape {img.shape}")
    return img


def save_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    dtype: np.dtype | type | None = None,
    durable: bool = True,
) -> Path:
    """Write ``data`` atomically (temp file in the same folder + ``os.replace``; see :func:`atomic_write`)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
    img.set_qform(np.asarray(affine, dtype=float), code=1)
    img.set_sform(np.asarray(affine, dtype=float), code=1)
    if arr.dtype == np.uint8:
        img.header.set_data_dtype(np.uint8)
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else p.suffix
    atomic_write(p, lambda tmp: nib.save(img, tmp), suffix=suffix, durable=durable)
    return p


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str | None = None,
                 durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then ``os.replace`` it into place.

    Readers see the old file or the new one, never half of one; on any error the temporary file is
    removed and ``path`` is untouched. With ``durable`` the file and the rename are fsynced before
    returning, so a caller may record (and acknowledge) the path afterwards: a crash or power cut
    cannot undo it (files the server can rewrite itself may skip that).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=p.suffix if suffix is None else suffix, dir=p.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and labels are meant to be shared
        if durable:
            fsync_path(tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(p.parent)
    return p


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
