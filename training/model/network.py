"""DynUNet configs and factory: a preset (:mod:`training.model.presets`) resolved into a network.

Kernels and strides are derived nnU-Net style from patch size and voxel spacing: an axis is
down-sampled while its spacing is within 2× of the finest one and it is still ≥ 8 voxels (so the
bottleneck ends at 4–7 voxels); ``max_levels`` caps the depth for the small presets.

Deep supervision: nnU-Net gives every decoder output except the lowest-resolution one a weight
(1/2^i, normalised). DynUNet's heads sit on all decoder stages but the lowest when
``deep_supr_num = levels - 2``; we build ``levels - 3`` heads, i.e. the lowest decoder output is
excluded by not computing it at all (same as weight 0, without the cost).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from monai.networks.nets import DynUNet

from training.config_dict import config_from_dict
from training.data.labels import NUM_CLASSES
from training.model.age import attach_age_head
from training.model.presets import PRESET_SPECS, PRESETS


class NetworkConfigError(ValueError):
    """Unknown preset or a patch size the derived strides cannot divide."""


def kernels_strides(
    patch_size: tuple[int, ...], spacing: tuple[float, ...], max_levels: int | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net style kernels/strides (MONAI DynUNet tutorial rule) for a patch and spacing."""
    sizes = [float(s) for s in patch_size]
    spacings = [float(s) for s in spacing]
    strides: list[list[int]] = [[1] * len(sizes)]
    kernels: list[list[int]] = []
    while max_levels is None or len(strides) < max_levels:
        ratio = [sp / min(spacings) for sp in spacings]
        stride = [2 if r <= 2 and s >= 8 else 1 for r, s in zip(ratio, sizes, strict=True)]
        kernel = [3 if r <= 2 else 1 for r in ratio]
        if all(s == 1 for s in stride):
            break
        for s, st in zip(sizes, stride, strict=True):
            if s % st:
                raise NetworkConfigError(f"patch size {patch_size} is not divisible by the derived strides {stride}")
        sizes = [s / st for s, st in zip(sizes, stride, strict=True)]
        spacings = [sp * st for sp, st in zip(spacings, stride, strict=True)]
        kernels.append(kernel)
        strides.append(stride)
    kernels.append([3] * len(sizes))
    return kernels, strides


@dataclass
class NetworkConfig:
    preset: str
    in_channels: int = 1
    out_channels: int = NUM_CLASSES
    patch_size: tuple[int, int, int] = (128, 128, 128)
    spacing: tuple[float, float, float] = (0.5, 0.5, 0.5)
    filters: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    kernels: list[list[int]] = field(default_factory=list)
    strides: list[list[int]] = field(default_factory=list)
    deep_supervision: bool = True
    deep_supr_num: int = 3
    res_block: bool = True
    age_head: bool = False  # AgeU-Net: scan-age regression head on the bottleneck (training/model/age.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["spacing"] = list(self.spacing)
        d["filters"] = list(self.filters)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkConfig:
        return config_from_dict(cls, d, ("patch_size", "spacing", "filters"))

    @property
    def levels(self) -> int:
        return len(self.strides)


def network_config(
    preset: str,
    in_channels: int = 1,
    patch_size: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> NetworkConfig:
    """Resolved network config for a preset (:data:`training.model.presets.PRESETS`), optionally another patch.

    Kernels, strides and the number of levels follow from the patch, so a custom patch size keeps the
    nnU-Net derivation instead of reusing the preset's strides.
    """
    if preset not in PRESET_SPECS:
        raise NetworkConfigError(f"unknown network preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p = PRESET_SPECS[preset]
    patch = tuple(int(s) for s in (patch_size or p["patch"]))
    sp = tuple(float(s) for s in (spacing or p["spacing"]))
    if len(patch) != 3 or len(sp) != 3 or min(patch) < 8:
        raise NetworkConfigError(f"patch size must be 3 values ≥ 8, got {patch}")
    kernels, strides = kernels_strides(patch, sp, max_levels=p["max_levels"])
    levels = len(strides)
    filters = tuple(p["filters"][:levels])
    if len(filters) < levels:
        filters = filters + (filters[-1],) * (levels - len(filters))
    return NetworkConfig(
        preset=preset,
        in_channels=int(in_channels),
        patch_size=patch,  # type: ignore[arg-type]
        spacing=sp,  # type: ignore[arg-type]
        filters=filters,
        kernels=kernels,
        strides=strides,
        deep_supervision=levels >= 4,
        deep_supr_num=max(levels - 3, 1),
    )


def large_windows_safe(cfg: NetworkConfig | None) -> bool:
    """Whether inference may use windows much larger than the training patch for this network's preset
    (measured per preset; unknown presets and custom networks get the safe answer, no)."""
    preset = getattr(cfg, "preset", None)
    return bool(PRESET_SPECS.get(preset, {}).get("large_windows", False))


def build_network(cfg: NetworkConfig) -> DynUNet:
    """Residual DynUNet, instance norm, LeakyReLU, deep supervision (heads returned in train mode).

    Built from the config alone, so a checkpoint's stored ``NetworkConfig`` rebuilds its network.
    """
    net = DynUNet(
        spatial_dims=3,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        kernel_size=cfg.kernels,
        strides=cfg.strides,
        upsample_kernel_size=cfg.strides[1:],
        filters=list(cfg.filters),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=cfg.deep_supervision,
        deep_supr_num=cfg.deep_supr_num,
        res_block=cfg.res_block,
        trans_bias=True,
    )
    if cfg.age_head:
        attach_age_head(net)
    return net
