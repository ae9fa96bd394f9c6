"""Inference-time replacements for DynUNet's instance norm.

* :func:`with_fast_instance_norm` — the same maths through the batch-norm kernels, which keep the
  channels-last layout (``F.instance_norm`` makes contiguous copies; measured about half of a bf16
  128³ window on CPU).
* :func:`with_patch_context_norm` — for windows larger than the training patch. Instance norm
  normalises each feature map by the statistics of the whole window; a network trained on 128³
  patches and run on one whole-head window then sees statistics of a context it never saw in
  training, and accuracy drops (measured on the cpu preset: tissue Dice 0.946 → 0.912). Here every
  voxel is normalised with the statistics of a *training-patch-sized* neighbourhood instead — the
  context a sliding window of the patch size would have given it — so one large window (no
  overlap, no blending, no duplicated border work) behaves like patch-size windows.

How the neighbourhood statistics are computed (per channel, per feature map of a level whose
patch extent is ``w`` voxels): the map is cut into blocks of ``b`` voxels (``b`` divides ``w`` and
the map, normally ``w/4``); block means and variances are pooled over ``k = w/b`` blocks into the
moments of every patch-sized window on the block grid; each block then takes the moments of the
window centred on it (windows at the edges are clamped inside the map, as a sliding window's edge
windows are; a centre between two grid windows averages their moments). Scale and shift are
constant per block, so the normalisation is one broadcast multiply-add over a view of the map, no
full-size statistics field is built.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.modules.instancenorm import _InstanceNorm


def _instance_norm_bn(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    if x.shape[0] == 1:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    return torch.cat([_instance_norm_bn(x[i : i + 1], weight, bias, eps) for i in range(x.shape[0])])


class InstanceNormByBatchStats(torch.nn.Module):
    """Instance norm computed with the batch-norm kernels (per sample): identical maths, layout kept."""

    def __init__(self, norm: _InstanceNorm) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm_bn(x, self.weight, self.bias, self.eps)


@dataclass
class _InputShape:
    """Spatial shape of the current network input, set by a forward pre-hook (levels derive their scale)."""

    shape: tuple[int, ...] = ()


def _window_weights(n: int, k: int, device: torch.device) -> torch.Tensor:
    """(n, n-k+1) weights: block i takes the window (of k blocks) centred on it, clamped inside."""
    m = n - k + 1
    w = torch.zeros(n, m, dtype=torch.float32, device=device)
    for i in range(n):
        t = min(max(i + 0.5 - k / 2.0, 0.0), float(m - 1))
        lo = math.floor(t)
        frac = t - lo
        w[i, lo] += 1.0 - frac
        if frac > 0:
            w[i, lo + 1] += frac
    return w


class PatchContextInstanceNorm(torch.nn.Module):
    """Instance norm whose statistics come from a patch-sized neighbourhood of each block (module doc)."""

    def __init__(self, norm: _InstanceNorm, patch_size: Sequence[int], input_shape: _InputShape,
                 blocks_per_patch: int = 4) -> None:
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = norm.weight
        self.bias = norm.bias
        self.patch_size = tuple(int(p) for p in patch_size)
        self.blocks_per_patch = int(blocks_per_patch)
        self._input = input_shape

    def _geometry(self, spatial: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Per axis: window extent w, block size b (divides w and the axis), blocks n."""
        full = self._input.shape or tuple(spatial)
        wins, blocks, ns = [], [], []
        for p, s, f in zip(self.patch_size, spatial, full, strict=True):
            w = min(max(round(p * s / f), 1), s)  # the patch's extent at this level's resolution
            b = math.gcd(s, w, max(w // self.blocks_per_patch, 1))
            wins.append(w)
            blocks.append(b)
            ns.append(s // b)
        return wins, blocks, ns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(int(v) for v in x.shape[2:])
        wins, bs, ns = self._geometry(spatial)
        if tuple(wins) == spatial:  # the window is the patch: plain instance norm
            return _instance_norm_bn(x, self.weight, self.bias, self.eps)
        batch, ch = int(x.shape[0]), int(x.shape[1])
        xl = x.permute(0, 2, 3, 4, 1)  # (B, X, Y, Z, C): a view without copy for channels-last input
        if not xl.is_contiguous():
            xl = xl.contiguous()
        xb = xl.view(batch, ns[0], bs[0], ns[1], bs[1], ns[2], bs[2], ch)
        var, mean = torch.var_mean(xb, dim=(2, 4, 6), correction=0)  # (B, n1, n2, n3, C)
        mean, var = mean.float(), var.float()
        moments = torch.cat([mean, var + mean * mean], dim=-1).permute(0, 4, 1, 2, 3)  # (B, 2C, n1, n2, n3)
        ks = [w // b for w, b in zip(wins, bs, strict=True)]
        win = F.avg_pool3d(moments, kernel_size=ks, stride=1)  # moments of every window on the block grid
        a = [_window_weights(n, k, x.device) for n, k in zip(ns, ks, strict=True)]
        per_block = torch.einsum("bcxyz,ix,jy,kz->bijkc", win, *a)  # (B, n1, n2, n3, 2C)
        m1, m2 = per_block[..., :ch], per_block[..., ch:]
        rstd = torch.rsqrt((m2 - m1 * m1).clamp_min(0.0) + self.eps)
        scale = rstd if self.weight is None else rstd * self.weight.float()
        shift = -m1 * scale if self.bias is None else self.bias.float() - m1 * scale
        view = (batch, ns[0], 1, ns[1], 1, ns[2], 1, ch)
        y = torch.addcmul(shift.to(x.dtype).view(view), xb, scale.to(x.dtype).view(view))
        return y.view(batch, *spatial, ch).permute(0, 4, 1, 2, 3)


def _swap_norms(model: torch.nn.Module, make) -> None:
    for name, child in model.named_children():
        if isinstance(child, _InstanceNorm) and not child.track_running_stats:
            setattr(model, name, make(child))
        else:
            _swap_norms(child, make)


def with_fast_instance_norm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose InstanceNorm layers (without running stats) use batch-norm kernels.

    Parameters keep their names, so ``state_dict`` of the copy loads into the original network.
    """
    model = copy.deepcopy(model)
    _swap_norms(model, InstanceNormByBatchStats)
    return model


class PatchContextModel(torch.nn.Module):
    """Wraps a network whose norms are :class:`PatchContextInstanceNorm`: tells them the input's shape.

    The shared shape object lives on this module, so ``copy.deepcopy`` keeps norms and wrapper linked.
    """

    def __init__(self, net: torch.nn.Module, patch_size: Sequence[int]) -> None:
        super().__init__()
        self.input_shape = _InputShape()
        self.net = net
        _swap_norms(self.net, lambda norm: PatchContextInstanceNorm(norm, patch_size, self.input_shape))

    def forward(self, x: torch.Tensor):
        self.input_shape.shape = tuple(int(v) for v in x.shape[2:])
        return self.net(x)


def with_patch_context_norm(model: torch.nn.Module, patch_size: Sequence[int]) -> torch.nn.Module:
    """A copy of ``model`` whose instance norms use patch-sized neighbourhood statistics (module doc).

    On an input of exactly ``patch_size`` it computes the same as the original network.
    """
    return PatchContextModel(copy.deepcopy(model), patch_size)
