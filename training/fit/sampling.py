"""Annotated-voxel patch sampling and the per-iteration training dataset.

Why not ``RandWeightedCropd``: it centres the patch on the sampled voxel, so with one annotated
plane per volume that plane would always cut through the patch centre, and DESIGN.md measured that
the network then learns *where* annotated planes sit (tissue Dice 0.36 vs 0.77–0.83 with moving
planes). Here a patch is placed so that a sampled annotated voxel lies at a *uniformly random*
position inside it (away from the outermost ``edge_fraction``), so annotated planes move within
the patch from one iteration to the next while every patch still contains annotation.

Which voxel: with probability ``p_tissue`` an annotated brain-tissue voxel (classes
``labels.TISSUE``), otherwise any annotated voxel (for a full label: anywhere in the cropped head,
i.e. plain random crops; for a partial label: anywhere on the annotated slices). Candidate voxels
are a seeded random subset (``max_candidates`` per kind, as nnU-Net's class locations), so memory
stays small for 0.5 mm volumes. A volume with nothing annotated falls back to uniform crops.

A context margin is cropped around the patch so that rotation/elastic deformation resample real
anatomy into the patch rather than padding; the augmentations then centre-crop the patch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from training.config_dict import config_from_dict
from training.data.labels import IGNORE, TISSUE


@dataclass(frozen=True)
class SamplingConfig:
    p_tissue: float = 0.5
    edge_fraction: float = 0.1  # the sampled voxel lies in [edge, 1 - edge] of the patch along each axis
    context_fraction: float = 0.1  # margin cropped around the patch for spatial augmentation, per side
    max_candidates: int = 20000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingConfig:
        return config_from_dict(cls, d)


@dataclass
class Candidates:
    """Voxel coordinates (N, 3) int32 to place patches on."""

    annotated: np.ndarray
    tissue: np.ndarray


def _subsample(coords: tuple[np.ndarray, ...], rng: np.random.Generator, n: int) -> np.ndarray:
    arr = np.stack(coords, axis=1).astype(np.int32) if len(coords[0]) else np.zeros((0, 3), np.int32)
    if len(arr) > n:
        arr = arr[rng.choice(len(arr), size=n, replace=False)]
    return arr


def build_candidates(label: np.ndarray, max_candidates: int = 20000, seed: int = 0) -> Candidates:
    """Annotated and annotated-tissue voxel coordinates of a (partial) label."""
    rng = np.random.default_rng(seed)
    annotated = label != IGNORE
    tissue = np.isin(label, TISSUE)  # 255 is not a tissue class, so this is annotated tissue
    return Candidates(
        annotated=_subsample(np.nonzero(annotated), rng, max_candidates),
        tissue=_subsample(np.nonzero(tissue), rng, max_candidates),
    )


def sample_patch_start(
    shape: tuple[int, ...], patch: tuple[int, ...], cand: Candidates | None, rng: np.random.Generator,
    cfg: SamplingConfig,
) -> np.ndarray:
    """Start (may be negative / beyond the volume: padded) of a patch containing a sampled annotated voxel."""
    shape_a, patch_a = np.asarray(shape[-3:]), np.asarray(patch)
    lo_all = np.minimum(0, shape_a - patch_a)  # if the volume is smaller than the patch, pad around it
    hi_all = np.maximum(0, shape_a - patch_a)
    pool = None
    if cand is not None:
        if len(cand.tissue) and rng.random() < cfg.p_tissue:
            pool = cand.tissue
        elif len(cand.annotated):
            pool = cand.annotated
    if pool is None:
        return np.array([rng.integers(a, b + 1) for a, b in zip(lo_all, hi_all, strict=True)])
    v = pool[rng.integers(len(pool))].astype(int)
    edge = np.floor(cfg.edge_fraction * patch_a).astype(int)
    lo = np.maximum(v - patch_a + 1 + edge, lo_all)
    hi = np.minimum(v - edge, hi_all)
    # if the edge rule cannot hold (voxel at the volume border), keep the voxel inside anyway
    lo2 = np.where(lo <= hi, lo, np.maximum(v - patch_a + 1, lo_all))
    hi2 = np.where(lo <= hi, hi, np.minimum(v, hi_all))
    return np.array([rng.integers(a, b + 1) for a, b in zip(lo2, hi2, strict=True)])


def crop_padded(arr: np.ndarray, start: np.ndarray, size: np.ndarray, fill: float = 0) -> np.ndarray:
    """Crop ``(…, X, Y, Z)`` at ``start`` (may lie outside) with ``fill`` padding."""
    spatial = np.asarray(arr.shape[-3:])
    start, size = np.asarray(start), np.asarray(size)
    out = np.full((*arr.shape[:-3], *size), fill, dtype=arr.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, spatial)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[(..., *(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True)))] = arr[
        (..., *(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True)))
    ]
    return out


@dataclass
class TrainCase:
    """One pre-processed subject held in memory for patch sampling."""

    id: str
    image: np.ndarray  # (C, X, Y, Z) float32
    label: np.ndarray  # (X, Y, Z) uint8 (0–9, 255)
    candidates: Candidates


def make_case(case_id: str, image: np.ndarray, label: np.ndarray, max_candidates: int = 20000,
              seed: int = 0) -> TrainCase:
    """A pre-processed subject ready to sample from: its candidate voxels are drawn once, not per patch."""
    return TrainCase(case_id, image, label, build_candidates(label, max_candidates, seed))


class PatchDataset:
    """``iterations`` random (patch, label) pairs per epoch; deterministic per (seed, epoch, index).

    A torch-style map dataset (``__len__``/``__getitem__``) that works with any number of
    DataLoader workers because every item derives its own RNG from (seed, epoch, index).
    """

    def __init__(self, cases: list[TrainCase], patch_size: tuple[int, int, int], length: int, augment=None,
                 cfg: SamplingConfig | None = None, seed: int = 0) -> None:
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = cases
        self.patch = np.asarray(patch_size, dtype=int)
        self.length = int(length)
        self.augment = augment
        self.cfg = cfg or SamplingConfig()
        self.seed = int(seed)
        self.epoch = 0
        self.margin = np.ceil(self.cfg.context_fraction * self.patch).astype(int) if augment is not None \
            else np.zeros(3, int)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case_index = int(rng.integers(len(self.cases)))
        case = self.cases[case_index]
        start = sample_patch_start(case.label.shape, tuple(self.patch), case.candidates, rng, self.cfg)
        ctx_start, ctx_size = start - self.margin, self.patch + 2 * self.margin
        image = crop_padded(case.image, ctx_start, ctx_size, 0.0)
        label = crop_padded(case.label, ctx_start, ctx_size, 0)[None].astype(np.float32)
        return {"image": image, "label": label, "seed": int(rng.integers(2**31 - 1)), "case": case_index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.sample(index)
        seed = item.pop("seed")
        case_index = item.pop("case")  # which case the patch came from (per-case targets, e.g. scan age)
        if self.augment is not None:
            self.augment.set_random_state(seed=seed)
            item = self.augment(item)
        image = _plain_tensor(item["image"]).to(torch.float32)
        label = _plain_tensor(item["label"]).round().to(torch.uint8)
        if image.shape[1:] != tuple(self.patch):  # no augmentation: context margin is 0 → exact patch
            raise RuntimeError(f"patch has shape {tuple(image.shape[1:])}, expected {tuple(self.patch)}")
        return {"image": image.contiguous(), "label": label.contiguous(), "case": case_index}


def _plain_tensor(x: Any) -> torch.Tensor:
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor → plain tensor (no meta tracking in the batch)
        return x.as_tensor()
    return torch.as_tensor(np.asarray(x))
