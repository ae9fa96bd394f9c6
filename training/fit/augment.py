"""Augmentations of the paper (§3.2) applied to image and partial label in lock-step.

MONAI dictionary transforms draw one set of random parameters per call and apply it to every key,
so image and label see the same geometry. The label (values 0–9 and 255, as float32) is always
resampled with ``nearest`` and padded with zeros: the 255 region moves with the anatomy, no value
other than the existing ones can appear, and space brought in from outside is class 0 (outside the
head), which is the partial-label contract. Intensity transforms touch only the image.

Input: ``{"image": (C, X, Y, Z) float32, "label": (1, X, Y, Z) float32}`` cropped with a context
margin around the patch (see training/sampling.py); the spatial transforms resample into the
centred ``patch_size`` output, so rotation/scaling never pull zero-padding into the patch needlessly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    Rand3DElasticd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)

from training.config_dict import config_from_dict


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities/ranges roughly following nnU-Net's defaults (the paper names the transforms only)."""

    p_flip: float = 0.5  # per axis
    p_affine: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.15  # ± fraction
    p_elastic: float = 0.1
    elastic_sigma: tuple[float, float] = (5.0, 7.0)  # voxels of the smoothing kernel
    elastic_magnitude: tuple[float, float] = (20.0, 60.0)
    p_noise: float = 0.15
    noise_std: float = 0.1
    p_smooth: float = 0.15
    smooth_sigma: tuple[float, float] = (0.5, 1.0)
    p_scale_intensity: float = 0.15
    scale_intensity: float = 0.25
    p_shift_intensity: float = 0.15
    shift_intensity: float = 0.1
    image_mode: str = "bilinear"  # tests use "nearest" to check geometric alignment exactly
    enabled: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        return config_from_dict(cls, d, ("elastic_sigma", "elastic_magnitude", "smooth_sigma"))

    def without_intensity(self) -> AugmentConfig:
        d = self.to_dict()
        d.update(p_noise=0.0, p_smooth=0.0, p_scale_intensity=0.0, p_shift_intensity=0.0)
        return AugmentConfig.from_dict(d)


def build_augmentations(cfg: AugmentConfig, patch_size: tuple[int, int, int]) -> Compose:
    """Spatial (elastic, affine → patch, flips) then intensity transforms; output has ``patch_size``.

    Spatial first, so the intensity transforms only pay for the patch, not for the context crop.
    """
    keys = ("image", "label")
    modes = (cfg.image_mode, "nearest")
    pads = ("zeros", "zeros")
    patch = tuple(int(s) for s in patch_size)
    t: list = []
    if cfg.enabled and cfg.p_elastic > 0:
        # Rand3DElasticd resamples (identity grid) even when its coin says no: gate it ourselves.
        t.append(_Maybe(Rand3DElasticd(keys=keys, sigma_range=cfg.elastic_sigma,
                                       magnitude_range=cfg.elastic_magnitude, prob=1.0, mode=modes,
                                       padding_mode=pads), cfg.p_elastic))
    if cfg.enabled and cfg.p_affine > 0:
        r = math.radians(cfg.rotate_deg)
        # Output keeps the context-crop size (rotation corners fill with zeros there), then the centre
        # crop below cuts the patch: the corners brought in by rotation mostly fall outside the patch.
        t.append(RandAffined(keys=keys, prob=cfg.p_affine, rotate_range=(r, r, r), scale_range=(cfg.scale,) * 3,
                             mode=modes, padding_mode=pads, cache_grid=False))
    t.append(SpatialPadd(keys=keys, spatial_size=patch, mode="constant", value=0))
    t.append(CenterSpatialCropd(keys=keys, roi_size=patch))
    if cfg.enabled and cfg.p_flip > 0:
        t.extend(RandFlipd(keys=keys, prob=cfg.p_flip, spatial_axis=ax) for ax in range(3))
    if cfg.enabled:
        if cfg.p_noise > 0:
            t.append(RandGaussianNoised(keys="image", prob=cfg.p_noise, std=cfg.noise_std))
        if cfg.p_smooth > 0:
            s = cfg.smooth_sigma
            t.append(RandGaussianSmoothd(keys="image", prob=cfg.p_smooth, sigma_x=s, sigma_y=s, sigma_z=s))
        if cfg.p_scale_intensity > 0:
            t.append(RandScaleIntensityd(keys="image", prob=cfg.p_scale_intensity, factors=cfg.scale_intensity))
        if cfg.p_shift_intensity > 0:
            t.append(RandShiftIntensityd(keys="image", prob=cfg.p_shift_intensity, offsets=cfg.shift_intensity))
    return Compose(t, log_stats=False)


class _Maybe(RandomizableTransform):
    """Apply ``transform`` with probability ``prob`` (and skip its cost otherwise)."""

    def __init__(self, transform, prob: float) -> None:
        super().__init__(prob=prob)
        self.transform = transform

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return self

    def __call__(self, data):
        self.randomize(None)
        return self.transform(data) if self._do_transform else data
