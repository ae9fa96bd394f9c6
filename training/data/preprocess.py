"""Pre-processing shared by training and inference (one function, so the two can never drift).

``preprocess`` loads the configured modalities (+ an optional, possibly partial label), reorients
everything to RAS, crops to the head and normalises each channel on its non-zero voxels.
``restore`` maps any array computed on that grid (labels, probabilities) back onto the input's
original voxel grid, orientation and shape, so predictions are saved exactly where the image was.

Crop rule: the box is the bounding box of the head (image voxels above ``foreground_threshold``
in any channel) united with the bounding box of every *annotated non-outer-background* label voxel,
plus a margin. Annotated voxels of class 0 (outer background) outside that box may be cut: that is
no loss, because everything outside the crop is class 0 by definition (``restore`` fills 0 there and
sampling pads the label with 0). Nothing annotated with a class other than 0 is ever cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from training.config_dict import config_from_dict
from training.data.labels import IGNORE, OUTER_BACKGROUND, validate_label
from training.data.nifti import Volume, load_volume


class PreprocessError(ValueError):
    """Inputs that cannot be pre-processed together (shape/affine mismatch, wrong count, ...)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """Resolved pre-processing settings; stored in checkpoints so inference repeats them exactly."""

    modalities: tuple[str, ...] = ("T2w",)
    crop_margin_mm: float = 4.0
    foreground_threshold: float = 0.0  # head = voxels > threshold in any channel (paper: non-zero box)
    normalize_nonzero: bool = True  # z-score on non-zero voxels only (zeros stay 0: background)
    affine_atol: float = 1e-3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return config_from_dict(cls, d, ("modalities",))


@dataclass(frozen=True)
class PreprocessMeta:
    """Everything ``restore`` needs to map the processed grid back onto the input grid."""

    original_shape: tuple[int, int, int]
    original_affine: np.ndarray = field(repr=False)
    to_ras: np.ndarray = field(repr=False)  # nibabel orientation transform original → RAS
    ras_shape: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_end: tuple[int, int, int]
    affine: np.ndarray = field(repr=False)  # affine of the processed (RAS, cropped) grid

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(e - s) for s, e in zip(self.crop_start, self.crop_end, strict=True))  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


@dataclass
class Preprocessed:
    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray | None  # (X, Y, Z) uint8, 0–9 and 255
    meta: PreprocessMeta


def _as_volume(item: Path | str | Volume, what: str) -> Volume:
    if isinstance(item, Volume):
        return Volume(np.asarray(item.data), np.asarray(item.affine, dtype=float))
    return load_volume(item)


def _ras_transform(affine: np.ndarray) -> np.ndarray:
    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))


def _reorient(arr: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply an orientation transform to the *last three* axes (leading channel axes allowed)."""
    lead = arr.ndim - 3
    moved = np.moveaxis(arr, tuple(range(lead)), tuple(range(3, arr.ndim))) if lead else arr
    out = nib.orientations.apply_orientation(moved, transform)
    if lead:
        out = np.moveaxis(out, tuple(range(3, arr.ndim)), tuple(range(lead)))
    return np.ascontiguousarray(out)


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    if not mask.any():
        return None
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.array(lo), np.array(hi)


def preprocess(
    images: Sequence[Path | str | Volume],
    label: Path | str | np.ndarray | None,
    cfg: PreprocessConfig,
) -> Preprocessed:
    """Load, reorient to RAS, crop to the head, normalise. ``images`` follow ``cfg.modalities``."""
    if isinstance(images, Path | str | Volume):
        images = [images]
    if len(images) != len(cfg.modalities):
        raise PreprocessError(
            f"expected {len(cfg.modalities)} image(s) for modalities {list(cfg.modalities)}, got {len(images)}"
        )
    vols = [_as_volume(im, m) for im, m in zip(images, cfg.modalities, strict=True)]
    ref = vols[0]
    if ref.data.ndim != 3:
        raise PreprocessError(f"image must be a 3D volume, got shape {ref.data.shape}")
    for m, v in zip(cfg.modalities[1:], vols[1:], strict=True):
        if v.data.shape != ref.data.shape:
            raise PreprocessError(f"{m} shape {v.data.shape} differs from {cfg.modalities[0]} shape {ref.data.shape}")
        if not np.allclose(v.affine, ref.affine, atol=cfg.affine_atol):
            raise PreprocessError(f"{m} affine differs from the {cfg.modalities[0]} affine; co-register them first")
    shape = tuple(int(s) for s in ref.data.shape)
    stack = np.stack([np.asarray(v.data, dtype=np.float32) for v in vols])
    if not np.all(np.isfinite(stack)):
        raise PreprocessError("image contains NaN or infinite values")

    lab: np.ndarray | None = None
    if label is not None:
        if isinstance(label, np.ndarray):
            lab = validate_label(label, image_shape=shape)
        else:
            lv = load_volume(label)
            lab = validate_label(lv.data, image_shape=shape, label_affine=lv.affine, image_affine=ref.affine,
                                 what=f"label {label}")

    # --- orientation: work in RAS internally
    tr = _ras_transform(ref.affine)
    stack = _reorient(stack, tr)
    ras_shape = tuple(int(s) for s in stack.shape[1:])
    ras_affine = ref.affine @ nib.orientations.inv_ornt_aff(tr, shape)
    if lab is not None:
        lab = _reorient(lab, tr)

    # --- crop: head box ∪ box of annotated non-outer-background voxels, plus margin
    head = (stack > cfg.foreground_threshold).any(axis=0)
    keep = head
    if lab is not None:
        keep = head | ((lab != IGNORE) & (lab != OUTER_BACKGROUND))
    box = _bbox(keep)
    if box is None:
        lo, hi = np.zeros(3, int), np.array(ras_shape)
    else:
        spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
        margin = np.ceil(cfg.crop_margin_mm / np.maximum(spacing, 1e-6)).astype(int)
        lo = np.maximum(box[0] - margin, 0)
        hi = np.minimum(box[1] + margin, np.array(ras_shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    stack = np.ascontiguousarray(stack[(slice(None), *sl)])
    if lab is not None:
        lab = np.ascontiguousarray(lab[sl])
    crop_affine = ras_affine.copy()
    crop_affine[:3, 3] = ras_affine[:3, :3] @ lo + ras_affine[:3, 3]

    # --- channel-wise normalisation (non-zero voxels)
    for c in range(stack.shape[0]):
        ch = stack[c]
        sel = ch != 0 if cfg.normalize_nonzero else np.ones(ch.shape, bool)
        if sel.any():
            vals = ch[sel]
            mu, sd = float(vals.mean()), float(vals.std())
            ch[sel] = (vals - mu) / (sd if sd > 1e-8 else 1.0)
    meta = PreprocessMeta(
        original_shape=shape,  # type: ignore[arg-type]
        original_affine=np.asarray(ref.affine, float),
        to_ras=tr,
        ras_shape=ras_shape,  # type: ignore[arg-type]
        crop_start=tuple(int(v) for v in lo),  # type: ignore[arg-type]
        crop_end=tuple(int(v) for v in hi),  # type: ignore[arg-type]
        affine=crop_affine,
    )
    return Preprocessed(image=stack.astype(np.float32, copy=False), label=lab, meta=meta)


_SUBJECT_LABEL = object()


def preprocess_subject(subject: Any, cfg: PreprocessConfig, label: Any = _SUBJECT_LABEL) -> Preprocessed:
    """``preprocess`` for a ``training.data.dataset.Subject``; ``label`` defaults to the subject's dense label."""
    images = [subject.modality(m) for m in cfg.modalities]
    if label is _SUBJECT_LABEL:
        label = subject.label
    return preprocess(images, label, cfg)


def restore(array: np.ndarray, meta: PreprocessMeta, fill: int | float = 0) -> np.ndarray:
    """Map ``(…, X, Y, Z)`` on the processed grid back to the original grid (``fill`` outside the crop)."""
    arr = np.asarray(array)
    if arr.ndim < 3 or tuple(arr.shape[-3:]) != meta.shape:
        raise PreprocessError(f"array spatial shape {arr.shape[-3:]} does not match the processed grid {meta.shape}")
    lead = arr.shape[:-3]
    full = np.full((*lead, *meta.ras_shape), fill, dtype=arr.dtype)
    sl = tuple(slice(a, b) for a, b in zip(meta.crop_start, meta.crop_end, strict=True))
    full[(..., *sl)] = arr
    inv = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.io_orientation(meta.original_affine)
    )
    out = _reorient(full, inv)
    if tuple(out.shape[-3:]) != tuple(meta.original_shape):  # cannot happen unless meta is corrupted
        raise PreprocessError(f"restored shape {out.shape[-3:]} differs from the original {meta.original_shape}")
    return out
