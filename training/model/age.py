"""AgeU-Net: scan-age regression from the U-Net bottleneck, trained jointly with the segmentation.

Richter & Fetit 2022 put a regression head on the bottleneck (convolution down to 1×1×1, fully
connected) and trained ``loss = segmentation loss + α · MSE(age)`` with ``α = 0.01``. Here:

* **Head** (:class:`AgeHead`): 3×3×3 convolution + instance norm + LeakyReLU on the bottleneck
  features, global average pooling (any window size works), linear layer → one number.
* **Attachment** (:func:`attach_age_head`): the head is a child module ``age_head`` of the
  DynUNet and reads the bottleneck through a *forward hook* on the module that
  :func:`training.fit.finetune.unet_levels` finds by walking the topology (no parameter names).
  ``model(x)`` is unchanged (segmentation output only), so training, validation, the Predictor
  and checkpoints work as before; :func:`forward_with_age` returns ``(segmentation, age)``.
  ``NetworkConfig.age_head = True`` makes ``build_network`` attach it, so checkpoints round-trip.
* **Units**: the head predicts a *normalised* age ``(age − 40) / 5`` (weeks post-menstrual age;
  40 = term, 5 ≈ the dHCP standard deviation), so its MSE is O(1) like the segmentation loss and
  α keeps the paper's meaning of "a small auxiliary term". The MSE in the loss is in normalised
  units (1 unit² = 25 weeks²); reports convert back to weeks (MAE in weeks, MSE in weeks²).
* **Inference** (:func:`predict_age`): windows of the training patch size tile the pre-processed
  volume (as in the sliding-window segmentation); the age is the mean of the window predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

AGE_MEAN_WEEKS = 40.0
AGE_SD_WEEKS = 5.0
DEFAULT_AGE_WEIGHT = 0.01


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
    """Give a DynUNet an ``age_head`` fed by a forward hook on its bottleneck (found structurally)."""
    from training.fit.finetune import unet_levels

    if has_age_head(model):
        return model
    _, bottleneck = unet_levels(model)
    head = AgeHead(_bottleneck_channels(model, bottleneck), hidden)
    model.age_head = head
    bottleneck.register_forward_hook(head.capture)
    return model


def has_age_head(model: nn.Module) -> bool:
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


def age_loss(seg_loss: torch.Tensor, age_pred: torch.Tensor, age_target_weeks: torch.Tensor,
             alpha: float = DEFAULT_AGE_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seg_loss + α · MSE, MSE)``; the MSE is between normalised ages (see module doc)."""
    target = normalise_age(age_target_weeks.to(age_pred.device, torch.float32))
    mse = torch.mean((age_pred.float().reshape(-1) - target.reshape(-1)) ** 2)
    return seg_loss + float(alpha) * mse, mse


class AgeTraining:
    """The train-step hook: adds ``α · MSE(age)`` to the segmentation loss for a batch of patches.

    ``case_ages[i]`` is the scan age (weeks) of training case ``i``; batches carry ``"case"``
    (the case index each patch came from, see ``training.fit.sampling.PatchDataset``).
    """

    def __init__(self, model: nn.Module, case_ages: Sequence[float], alpha: float = DEFAULT_AGE_WEIGHT) -> None:
        if not has_age_head(model):
            raise AgeError("age training needs a network with an age head")
        self.model = model
        model.age_head.active = True  # every training forward pass now also predicts the age
        self.ages = torch.as_tensor(np.asarray(case_ages, dtype=np.float32))
        self.alpha = float(alpha)
        self.mse_history: list[float] = []

    @classmethod
    def for_cases(cls, model: nn.Module, cases: Sequence[Any], subjects: Sequence[Any],
                  alpha: float = DEFAULT_AGE_WEIGHT) -> AgeTraining:
        """Ages of the training cases, looked up by id in ``subjects`` (all must have a scan age)."""
        ages = {s.id: getattr(s, "scan_age", None) for s in subjects}
        missing = [c.id for c in cases if ages.get(c.id) is None]
        if missing:
            raise AgeError(f"age head: {len(missing)} training subject(s) have no scan age "
                           f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})")
        return cls(model, [float(ages[c.id]) for c in cases], alpha)

    def __call__(self, seg_loss: torch.Tensor, batch: dict) -> torch.Tensor:
        if "case" not in batch:
            raise AgeError("the batch carries no case index; cannot look up the age targets")
        target = self.ages[torch.as_tensor(batch["case"]).long().cpu()]
        total, mse = age_loss(seg_loss, self.model.age_head.pop(), target, self.alpha)
        self.mse_history.append(float(mse.detach()))
        return total

    def epoch_mse(self) -> float:
        """Mean normalised-age MSE since the last call (for the epoch record), then reset."""
        v = float(np.mean(self.mse_history)) if self.mse_history else float("nan")
        self.mse_history = []
        return v


def _window_starts(size: int, roi: int, overlap: float) -> list[int]:
    if size <= roi:
        return [0]
    step = max(1, int(round(roi * (1.0 - overlap))))
    n = int(math.ceil((size - roi) / step)) + 1
    return sorted({min(i * step, size - roi) for i in range(n)})


def predict_age(model: nn.Module, image: np.ndarray | torch.Tensor, patch_size: Sequence[int],
                overlap: float = 0.5, batch_size: int = 4, device: str | torch.device | None = None) -> float:
    """Scan age (weeks) of one pre-processed volume ``(C, X, Y, Z)``: mean over sliding windows.

    Windows have the training patch size (the head saw patches of that size); volumes smaller
    than a window are zero-padded (pre-processing maps outside-the-head to 0).
    """
    if not has_age_head(model):
        raise AgeError("this network has no age head")
    if not 0.0 <= overlap < 1.0:
        raise AgeError(f"overlap must be in [0, 1), got {overlap}")
    x = torch.as_tensor(np.asarray(image, dtype=np.float32)) if not isinstance(image, torch.Tensor) else image.float()
    if x.dim() != 4:
        raise AgeError(f"expected a (C, X, Y, Z) volume, got shape {tuple(x.shape)}")
    roi = [int(v) for v in patch_size]
    pad = [max(0, r - s) for r, s in zip(roi, x.shape[1:], strict=True)]
    if any(pad):
        x = torch.nn.functional.pad(x, [v for p in reversed(pad) for v in (p // 2, p - p // 2)])
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    starts = [_window_starts(int(s), r, overlap) for s, r in zip(x.shape[1:], roi, strict=True)]
    windows = [(a, b, c) for a in starts[0] for b in starts[1] for c in starts[2]]
    preds: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                chunk = windows[i:i + batch_size]
                xb = torch.stack([x[:, a:a + roi[0], b:b + roi[1], c:c + roi[2]] for a, b, c in chunk]).to(dev)
                _, age = forward_with_age(model, xb)
                preds.append(age.float().cpu())
    finally:
        model.train(was_training)
    return float(weeks_from_normalised(torch.cat(preds).mean()))


@dataclass
class AgeReport:
    """Scan-age errors in weeks: per subject and MAE (weeks) / MSE (weeks²) over all."""

    subjects: list[dict] = field(default_factory=list)  # {"id", "true", "pred", "error"}

    @property
    def mae(self) -> float:
        return float(np.mean([abs(s["error"]) for s in self.subjects])) if self.subjects else float("nan")

    @property
    def mse(self) -> float:
        return float(np.mean([s["error"] ** 2 for s in self.subjects])) if self.subjects else float("nan")

    def baseline_mae(self, constant_weeks: float) -> float:
        """MAE of always answering ``constant_weeks`` (e.g. the training mean): what "learned nothing" scores."""
        return float(np.mean([abs(s["true"] - constant_weeks) for s in self.subjects])) if self.subjects \
            else float("nan")

    def to_dict(self) -> dict:
        return {"mae_weeks": self.mae, "mse_weeks2": self.mse, "subjects": list(self.subjects)}

    def to_text(self) -> str:
        lines = [f"{'subject':<28}{'true':>8}{'pred':>8}{'error':>8}"]
        for s in self.subjects:
            lines.append(f"{s['id']:<28}{s['true']:>8.2f}{s['pred']:>8.2f}{s['error']:>+8.2f}")
        lines.append(f"MAE {self.mae:.2f} weeks, MSE {self.mse:.2f} weeks²")
        return "\n".join(lines)


def evaluate_age(model: nn.Module, subjects: Sequence[Any], preprocess_cfg: Any, patch_size: Sequence[int],
                 overlap: float = 0.5, device: str | torch.device | None = None) -> AgeReport:
    """Predict the scan age of every subject that has one and report MAE/MSE in weeks."""
    from training.data.preprocess import preprocess_subject

    with_age = [s for s in subjects if getattr(s, "scan_age", None) is not None]
    if not with_age:
        raise AgeError("no subject with a scan age to evaluate")
    report = AgeReport()
    for s in with_age:
        pp = preprocess_subject(s, preprocess_cfg, label=None)
        pred = predict_age(model, pp.image, patch_size, overlap=overlap, device=device)
        report.subjects.append({"id": s.id, "true": float(s.scan_age), "pred": pred,
                                "error": pred - float(s.scan_age)})
    return report


def evaluate_age_checkpoint(ckpt: Any, subjects: Sequence[Any], overlap: float = 0.5,
                            device: str | None = None) -> AgeReport:
    """:func:`evaluate_age` for a checkpoint of an AgeU-Net (``NetworkConfig.age_head``)."""
    from training.model.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt, map_location=device or "cpu")
    if not has_age_head(ck.model):
        raise AgeError(f"{ckpt}: the network has no age head")
    return evaluate_age(ck.model, subjects, ck.preprocess, ck.network.patch_size, overlap, device)


def age_report_for(ckpt: Any, subjects: Sequence[Any], device: str | None = None) -> AgeReport | None:
    """Scan-age report when ``ckpt`` is an AgeU-Net and some subjects have an age; else ``None`` (for CLIs)."""
    from training.model.checkpoint import load_checkpoint

    ck = load_checkpoint(ckpt, map_location=device or "cpu")
    if not has_age_head(ck.model) or not any(getattr(s, "scan_age", None) is not None for s in subjects):
        return None
    return evaluate_age(ck.model, subjects, ck.preprocess, ck.network.patch_size, device=device)
