"""AgeU-Net, the evaluation part: scan-age errors in weeks (MAE, MSE) per subject and over a set.

A report converts the head's normalised units back to weeks, because weeks are what a reader
compares with the paper (MAE in weeks, MSE in weeks²), and offers the "always answer a constant"
baseline, since an MAE means little without what learning nothing would score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data.preprocess import PreprocessConfig, preprocess_subject
from training.infer.age import predict_age
from training.model.age import AgeError, has_age_head
from training.model.checkpoint import load_checkpoint


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


def evaluate_age(model: nn.Module, subjects: Sequence[Any], preprocess_cfg: PreprocessConfig,
                 patch_size: Sequence[int], overlap: float = 0.5,
                 device: str | torch.device | None = None) -> AgeReport:
    """Predict the scan age of every subject that has one and report MAE/MSE in weeks.

    Subjects without an age are skipped rather than refused: a study set rarely has every age.
    """
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


def evaluate_age_checkpoint(ckpt: str | os.PathLike, subjects: Sequence[Any], overlap: float = 0.5,
                            device: str | None = None) -> AgeReport:
    """:func:`evaluate_age` for a checkpoint of an AgeU-Net (``NetworkConfig.age_head``); windows of its patch."""
    ck = load_checkpoint(ckpt, map_location=device or "cpu")
    if not has_age_head(ck.model):
        raise AgeError(f"{ckpt}: the network has no age head")
    return evaluate_age(ck.model, subjects, ck.preprocess, ck.network.patch_size, overlap, device)


def age_report_for(ckpt: str | os.PathLike, subjects: Sequence[Any], device: str | None = None) -> AgeReport | None:
    """Scan-age report when ``ckpt`` is an AgeU-Net and some subjects have an age; else ``None``.

    For ``neolabel evaluate``: it adds the age section only where there is one, without an error.
    """
    ck = load_checkpoint(ckpt, map_location=device or "cpu")
    if not has_age_head(ck.model) or not any(getattr(s, "scan_age", None) is not None for s in subjects):
        return None
    return evaluate_age(ck.model, subjects, ck.preprocess, ck.network.patch_size, device=device)
