"""AgeU-Net, the fitting part: ``loss = segmentation loss + α · MSE(normalised age)``.

The network and its units are :mod:`training.model.age`; this module adds the auxiliary term to a
train step. α defaults to the paper's 0.01: small next to the segmentation loss, because the MSE is
taken in normalised units (O(1), see :func:`training.model.age.normalise_age`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from training.model.age import AgeError, has_age_head, normalise_age

DEFAULT_AGE_WEIGHT = 0.01
"""α of Richter & Fetit 2022."""


def age_loss(seg_loss: torch.Tensor, age_pred: torch.Tensor, age_target_weeks: torch.Tensor,
             alpha: float = DEFAULT_AGE_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(seg_loss + α · MSE, MSE)``; the MSE is between normalised ages, so α keeps the paper's meaning."""
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
