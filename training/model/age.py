"""AgeU-Net, the model part: a scan-age regression head on the U-Net bottleneck.

Richter & Fetit 2022 put a regression head on the bottleneck (convolution down to 1×1×1, fully
connected) and trained ``loss = segmentation loss + α · MSE(age)`` with ``α = 0.01``. The stages
of the AgeU-Net live with their stage: the loss term in :mod:`training.fit.age`, the
window-averaged prediction in :mod:`training.infer.age`, MAE/MSE reports in
:mod:`training.evaluate.age`. Here:

* **Head** (:class:`AgeHead`): 3×3×3 convolution + instance norm + LeakyReLU on the bottleneck
  features, global average pooling (any window size works), linear layer → one number.
* **Attachment** (:func:`attach_age_head`): the head is a child module ``age_head`` of the
  DynUNet and reads the bottleneck through a *forward hook* on the module that
  :func:`training.model.levels.unet_levels` finds by walking the topology (no parameter names).
  ``model(x)`` is unchanged (segmentation output only), so training, validation, the Predictor
  and checkpoints work as before; :func:`forward_with_age` returns ``(segmentation, age)``.
  ``NetworkConfig.age_head = True`` makes ``build_network`` attach it, so checkpoints round-trip.
* **Units**: the head predicts a *normalised* age ``(age − 40) / 5`` (weeks post-menstrual age;
  40 = term, 5 ≈ the dHCP standard deviation), so its MSE is O(1) like the segmentation loss and
  α keeps the paper's meaning of "a small auxiliary term". The MSE in the loss is in normalised
  units (1 unit² = 25 weeks²); reports convert back to weeks (MAE in weeks, MSE in weeks²).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.model.levels import unet_levels

AGE_MEAN_WEEKS = 40.0
AGE_SD_WEEKS = 5.0


class AgeError(ValueError):
    """Subjects without a scan age, a model without an age head, or bad inference arguments."""


def normalise_age(weeks: Any) -> Any:
    """Weeks post-menstrual age → the head's target units ``(age − 40) / 5``."""
    return (weeks - AGE_MEAN_WEEKS) / AGE_SD_WEEKS


def weeks_from_normalised(value: Any) -> Any:
    """Inverse of :func:`normalise_age`."""
    return value * AGE_SD_WEEKS + AGE_MEAN_WEEKS


class AgeHead(nn.Module):
    """Bottleneck features (B, C, x, y, z) → normalised age (B,).

    The most recent output is kept in ``last`` by the bottleneck hook, for :func:`forward_with_age`.
    """

    def __init__(self, in_channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = int(hidden or in_channels)
        self.conv = nn.Conv3d(in_channels, hidden, kernel_size=3, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(hidden, affine=True)
        self.act = nn.LeakyReLU(0.01)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc.bias)  # start at the normalisation centre (40 weeks)
        self.last: torch.Tensor | None = None
        # The hook computes the age only when asked (forward_with_age, AgeTraining): segmentation-only
        # inference (Predictor, validation windows of any size) pays nothing for the head.
        self.active = False

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm(self.conv(features)))
        return self.fc(self.pool(h).flatten(1)).squeeze(1).float()

    def capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        """Forward hook on the bottleneck: compute and keep the age for this forward pass (when active)."""
        if self.active:
            self.last = self(output)

    def pop(self) -> torch.Tensor:
        """The age of the last forward pass (and forget it, so no stale graph is kept alive)."""
        if self.last is None:
            raise AgeError("no age prediction: run the network forward first")
        out, self.last = self.last, None
        return out


def _bottleneck_channels(model: nn.Module, bottleneck: nn.Module) -> int:
    filters = getattr(model, "filters", None)
    if filters:
        return int(filters[-1])
    convs = [m for m in bottleneck.modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise AgeError("cannot find the bottleneck's output channels")
    return int(convs[-1].out_channels)


def attach_age_head(model: nn.Module, hidden: int | None = None) -> nn.Module:
    """Give a DynUNet an ``age_head`` fed by a forward hook on its bottleneck (found structurally).

    A hook rather than a subclass: ``model(x)`` keeps returning the segmentation only, so every
    segmentation-only user (training loop, Predictor, checkpoints) works unchanged.
    """
    if has_age_head(model):
        return model
    _, bottleneck = unet_levels(model)
    head = AgeHead(_bottleneck_channels(model, bottleneck), hidden)
    model.age_head = head
    bottleneck.register_forward_hook(head.capture)
    return model


def has_age_head(model: nn.Module) -> bool:
    """Whether ``model`` carries an :class:`AgeHead` (an AgeU-Net), so callers can refuse plain networks."""
    return isinstance(getattr(model, "age_head", None), AgeHead)


def forward_with_age(model: nn.Module, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """``(segmentation output, normalised age (B,))`` of one forward pass."""
    if not has_age_head(model):
        raise AgeError("this network has no age head (build it with NetworkConfig.age_head = True)")
    head = model.age_head
    head.last, was_active = None, head.active
    head.active = True
    try:
        seg = model(x)
    finally:
        head.active = was_active
    return seg, head.pop()
