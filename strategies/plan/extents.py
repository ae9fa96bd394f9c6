"""Per-image planning metadata: shape, affine, which slices contain brain, scan age.

Planning runs on :class:`PlanEntry` metadata only, so a plan over hundreds of dHCP volumes never
touches voxel data. Building an entry loads the brain mask (or the label, classes
``training.data.labels.BRAIN``) once; :class:`ExtentCache` keeps the result in a JSON file keyed by
the file's absolute path, modification time and size, so later plans load nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from strategies.plan.axes import AXES, AxisError, axis_frames, check_axis_name
from training.data.labels import BRAIN

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_NAME = "plan_extents.json"


class ExtentError(ValueError):
    """Planning metadata that cannot be built or is inconsistent."""


def _to_ranges(indices: Iterable[int]) -> list[list[int]]:
    """Sorted indices → ``[[start, stop), ...]`` runs (compact JSON)."""
    out: list[list[int]] = []
    for i in sorted(int(x) for x in indices):
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


def _from_ranges(ranges: Iterable[Sequence[int]]) -> tuple[int, ...]:
    out: list[int] = []
    for r in ranges:
        if len(r) != 2 or int(r[0]) > int(r[1]):
            raise ExtentError(f"bad index range {list(r)}")
        out.extend(range(int(r[0]), int(r[1])))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class PlanEntry:
    """What the planner needs to know about one image (no voxel data).

    ``brain_slices_per_voxel_axis[v]`` lists, sorted, the voxel indices along voxel axis ``v``
    whose slice contains at least one brain voxel.
    """

    id: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    brain_slices_per_voxel_axis: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    scan_age: float | None = None
    _frames: dict = field(default=None, init=False, repr=False)  # type: ignore[assignment]
    _canonical: dict = field(default=None, init=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ExtentError(f"plan entry id must be a non-empty string, got {self.id!r}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ExtentError(f"{self.id}: shape must be three positive sizes, got {self.shape}")
        object.__setattr__(self, "shape", shape)
        affine = np.asarray(self.affine, dtype=float)
        object.__setattr__(self, "affine", affine)
        try:
            frames = axis_frames(affine, shape)
        except AxisError as exc:
            raise ExtentError(f"{self.id}: {exc}") from None
        object.__setattr__(self, "_frames", frames)
        if len(self.brain_slices_per_voxel_axis) != 3:
            raise ExtentError(f"{self.id}: brain slices must be given for 3 voxel axes")
        slices = []
        for v, idx in enumerate(self.brain_slices_per_voxel_axis):
            arr = tuple(sorted({int(i) for i in idx}))
            if arr and (arr[0] < 0 or arr[-1] >= shape[v]):
                raise ExtentError(f"{self.id}: brain slice index out of range on voxel axis {v} (size {shape[v]})")
            slices.append(arr)
        object.__setattr__(self, "brain_slices_per_voxel_axis", tuple(slices))
        canonical = {}
        for name, frame in frames.items():
            arr = np.sort(frame.to_canonical(np.asarray(slices[frame.voxel_axis], dtype=np.int64)))
            arr.setflags(write=False)
            canonical[name] = arr
        object.__setattr__(self, "_canonical", canonical)
        if self.scan_age is not None:
            age = float(self.scan_age)
            object.__setattr__(self, "scan_age", age if np.isfinite(age) else None)

    @property
    def frames(self) -> dict:
        """``{axis name: AxisFrame}`` for this image."""
        return self._frames

    @property
    def has_brain(self) -> bool:
        return all(len(s) > 0 for s in self.brain_slices_per_voxel_axis)

    def brain_slices(self, axis: str) -> np.ndarray:
        """Canonical indices (counted from left/posterior/inferior) of the slices containing brain."""
        return self._canonical[check_axis_name(axis)]

    def usable_slices(self, axis: str, margin: float = 0.0) -> np.ndarray:
        """Canonical indices of brain slices outside the margins (see :func:`margin_window`)."""
        brain = self.brain_slices(axis)
        if brain.size == 0:
            return brain
        lo, hi = margin_window(int(brain[0]), int(brain[-1]), margin)
        return brain[(brain >= lo) & (brain <= hi)]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "shape": list(self.shape),
            "affine": np.asarray(self.affine).round(8).tolist(),
            "brain_ranges": [_to_ranges(s) for s in self.brain_slices_per_voxel_axis],
            "scan_age": self.scan_age,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanEntry:
        try:
            return cls(
                id=data["id"],
                shape=tuple(data["shape"]),
                affine=np.asarray(data["affine"], dtype=float),
                brain_slices_per_voxel_axis=tuple(_from_ranges(r) for r in data["brain_ranges"]),
                scan_age=data.get("scan_age"),
            )
        except (KeyError, TypeError) as exc:
            raise ExtentError(f"malformed plan entry JSON ({exc})") from None


def margin_window(first: int, last: int, margin: float) -> tuple[int, int]:
    """Inclusive canonical index window left after excluding ``margin`` of the brain extent per end.

    The brain extent is ``last - first + 1`` slices; ``floor(margin * extent)`` slices are dropped
    at each end. At least the central slice always survives (margin < 0.5).
    """
    check_margin(margin)
    extent = last - first + 1
    cut = int(np.floor(margin * extent + 1e-9))
    lo, hi = first + cut, last - cut
    if lo > hi:
        mid = (first + last) // 2
        lo = hi = mid
    return lo, hi


def check_margin(margin: float) -> float:
    m = float(margin)
    if not np.isfinite(m) or m < 0 or m >= 0.5:
        raise ExtentError(f"margin must be in [0, 0.5) (a fraction of the brain extent per end), got {margin}")
    return m


def brain_slices_from_mask(mask: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Per voxel axis, the sorted indices of slices with at least one non-zero voxel."""
    m = np.asarray(mask)
    if m.ndim != 3:
        raise ExtentError(f"brain mask must be 3D, got shape {m.shape}")
    m = m != 0
    out = []
    for v in range(3):
        other = tuple(a for a in range(3) if a != v)
        out.append(tuple(int(i) for i in np.flatnonzero(m.any(axis=other))))
    return tuple(out)  # type: ignore[return-value]


def brain_mask_from_label(label: np.ndarray) -> np.ndarray:
    """Voxels whose class is one of ``training.data.labels.BRAIN`` (255 = not annotated is not brain)."""
    return np.isin(np.asarray(label), np.asarray(BRAIN))


def entry_from_arrays(
    id: str,
    affine: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    label: np.ndarray | None = None,
    scan_age: float | None = None,
) -> PlanEntry:
    """Build an entry from an in-memory brain mask (non-zero = brain) or a drawem9 label."""
    if (mask is None) == (label is None):
        raise ExtentError(f"{id}: give exactly one of mask= or label=")
    m = np.asarray(mask) != 0 if mask is not None else brain_mask_from_label(label)  # type: ignore[arg-type]
    return PlanEntry(id, tuple(m.shape), affine, brain_slices_from_mask(m), scan_age)


# --------------------------------------------------------------------------------------------
# Cache


class ExtentCache:
    """JSON cache of brain slices (and image headers) per file, keyed by absolute path + mtime + size.

    ``hits``/``misses`` count brain-slice lookups (``header_hits``/``header_misses`` image headers),
    so callers (and tests) can see that each file was read at most once. ``save()`` writes
    atomically; an unwritable location only disables saving.
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.hits = 0
        self.misses = 0
        self.header_hits = 0
        self.header_misses = 0
        self._data: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
                if raw.get("version") == CACHE_VERSION and isinstance(raw.get("files"), dict):
                    self._data = raw["files"]
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable extent cache %s (%s)", self.path, exc)

    @staticmethod
    def _key(path: Path) -> tuple[str, str]:
        st = path.stat()
        return str(path.resolve()), f"{st.st_mtime_ns}:{st.st_size}"

    def brain_slices(self, path: str | os.PathLike, kind: str) -> tuple[tuple[int, ...], tuple[int, ...], np.ndarray]:
        """``(shape, brain slices per voxel axis, affine)`` for a mask (``kind="mask"``) or label file."""
        if kind not in ("mask", "label"):
            raise ExtentError(f"unknown brain source kind {kind!r}")
        from training.data.nifti import load_volume

        p = Path(path)
        name, stamp = self._key(p)
        entry = self._data.get(name)
        if entry is not None and entry.get("stamp") == stamp and entry.get("kind") == kind:
            self.hits += 1
            slices = tuple(_from_ranges(r) for r in entry["brain_ranges"])
            return tuple(entry["shape"]), slices, np.asarray(entry["affine"], dtype=float)  # type: ignore[return-value]
        self.misses += 1
        vol = load_volume(p)
        data = vol.data
        m = (data != 0) if kind == "mask" else brain_mask_from_label(data)
        slices = brain_slices_from_mask(m)
        self._data[name] = {
            "stamp": stamp,
            "kind": kind,
            "shape": list(data.shape),
            "affine": np.asarray(vol.affine).tolist(),
            "brain_ranges": [_to_ranges(s) for s in slices],
        }
        self._dirty = True
        return tuple(int(s) for s in data.shape), slices, np.asarray(vol.affine, dtype=float)  # type: ignore[return-value]

    def header(self, path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
        """``(shape, affine)`` of an image file, from the cache when the file is unchanged."""
        from training.data.nifti import read_header

        p = Path(path)
        name, stamp = self._key(p)
        entry = self._data.get(name)
        if entry is not None and entry.get("stamp") == stamp and entry.get("kind") == "header":
            self.header_hits += 1
            return tuple(entry["shape"]), np.asarray(entry["affine"], dtype=float)
        self.header_misses += 1
        shape, affine = read_header(p)
        self._data[name] = {"stamp": stamp, "kind": "header", "shape": list(shape), "affine": affine.tolist()}
        self._dirty = True
        return tuple(shape), affine

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        from training.data.nifti import atomic_write_text

        try:
            atomic_write_text(self.path, json.dumps({"version": CACHE_VERSION, "files": self._data}))
            self._dirty = False
        except OSError as exc:
            log.warning("cannot write extent cache %s (%s); plans will re-read brain masks", self.path, exc)


def default_cache_path(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/plan_extents.json`` or ``<root>/.neolabel/plan_extents.json``."""
    base = Path(cache_dir) if cache_dir is not None else Path(root) / ".neolabel"
    return base / CACHE_NAME


def entries_from_dataset(
    dataset: Any,
    *,
    cache: ExtentCache | None = None,
    cache_dir: str | os.PathLike | None = None,
    source: str = "auto",
    subjects: Sequence[Any] | None = None,
) -> tuple[list[PlanEntry], list[tuple[str, str]]]:
    """Plan entries for a ``training.data.dataset.Dataset`` (or its ``subjects``), each volume read at most once.

    ``source``: ``"mask"`` (brain mask file), ``"label"`` (drawem9 label, BRAIN classes) or
    ``"auto"`` (brain mask if present, else label: the brain mask exists for unlabelled scans too,
    so simulation and real annotation plan from the same kind of file). Returns the entries and
    ``(subject id, reason)`` for subjects that could not be planned. The image's own header gives
    the affine (the mask must be in the image grid).
    """
    if source not in ("auto", "mask", "label"):
        raise ExtentError(f"unknown brain source {source!r}; expected auto, mask or label")
    if cache is None:
        cache = ExtentCache(default_cache_path(dataset.root, cache_dir))
    subs = list(subjects) if subjects is not None else list(dataset.subjects)
    entries: list[PlanEntry] = []
    skipped: list[tuple[str, str]] = []
    for s in subs:
        candidates = []
        if source in ("auto", "mask") and getattr(s, "brain_mask", None) is not None:
            candidates.append((s.brain_mask, "mask"))
        if source in ("auto", "label") and getattr(s, "label", None) is not None:
            candidates.append((s.label, "label"))
        if not candidates:
            skipped.append((s.id, f"no {'brain mask or label' if source == 'auto' else source} file"))
            continue
        path, kind = candidates[0]
        try:
            shape, slices, affine = cache.brain_slices(path, kind)
            img_shape, img_affine = cache.header(s.image)
        except (OSError, ValueError) as exc:
            skipped.append((s.id, f"cannot read {kind} ({exc})"))
            continue
        if tuple(img_shape) != tuple(shape):
            skipped.append((s.id, f"{kind} shape {tuple(shape)} differs from image shape {tuple(img_shape)}"))
            continue
        if not np.allclose(img_affine, affine, atol=1e-3):
            skipped.append((s.id, f"{kind} affine differs from the image affine"))
            continue
        try:
            entry = PlanEntry(s.id, tuple(shape), img_affine, slices, getattr(s, "scan_age", None))
        except ExtentError as exc:
            skipped.append((s.id, str(exc)))
            continue
        if not entry.has_brain:
            skipped.append((s.id, f"no brain voxels in the {kind}"))
            continue
        entries.append(entry)
    cache.save()
    return entries, skipped


__all__ = [
    "AXES",
    "CACHE_NAME",
    "ExtentCache",
    "ExtentError",
    "PlanEntry",
    "brain_mask_from_label",
    "brain_slices_from_mask",
    "check_margin",
    "default_cache_path",
    "entries_from_dataset",
    "entry_from_arrays",
    "margin_window",
]
