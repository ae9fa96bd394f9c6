"""Evaluation reports: per-subject and mean metrics of a prediction, a predictor or a checkpoint.

The metrics and their conventions (absent classes, tissue mean, HD95 in mm) are ``training.metrics``;
this module runs predictions, collects those metrics per subject and writes them for people (``to_text``)
and machines (``to_dict``: JSON, NaN → null).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import labels as L
from training.data.nifti import load_volume
from training.infer.predictor import Predictor
from training.metrics import EvaluationError, dice_per_class, hd95_per_class, nanmean, tissue_mean

__all__ = [
    "EvaluationError",
    "EvaluationReport",
    "SubjectMetrics",
    "evaluate_arrays",
    "evaluate_checkpoint",
    "evaluate_predictor",
]


@dataclass
class SubjectMetrics:
    """One subject's per-class Dice and HD95 (mm) and the prediction's seconds; means skip NaNs."""

    id: str
    dice: dict[int, float]
    hd95: dict[int, float]
    seconds: float = math.nan

    @property
    def tissue_dice(self) -> float:
        return tissue_mean(self.dice)

    @property
    def mean_dice(self) -> float:
        return nanmean(self.dice.values())

    @property
    def tissue_hd95(self) -> float:
        return tissue_mean(self.hd95)


@dataclass
class EvaluationReport:
    """Per-subject and mean metrics; ``to_dict`` gives JSON (NaN → null, class keys as strings)."""

    subjects: list[SubjectMetrics] = field(default_factory=list)
    checkpoint: str | None = None

    def _mean(self, attr: str) -> dict[int, float]:
        return {
            c: nanmean(getattr(s, attr).get(c, math.nan) for s in self.subjects)
            for c in range(L.NUM_CLASSES)
        }

    @property
    def mean_dice(self) -> dict[int, float]:
        return self._mean("dice")

    @property
    def mean_hd95(self) -> dict[int, float]:
        return self._mean("hd95")

    @property
    def tissue_dice(self) -> float:
        """Mean over subjects of each subject's tissue mean Dice."""
        return nanmean(s.tissue_dice for s in self.subjects)

    @property
    def all_classes_dice(self) -> float:
        return nanmean(s.mean_dice for s in self.subjects)

    @property
    def tissue_hd95(self) -> float:
        return nanmean(s.tissue_hd95 for s in self.subjects)

    def to_dict(self) -> dict:
        def clean(v: float) -> float | None:
            return None if v is None or math.isnan(v) else round(float(v), 6)

        names = L.class_names()
        return {
            "checkpoint": self.checkpoint,
            "n_subjects": len(self.subjects),
            "classes": {str(c): names[c] for c in range(L.NUM_CLASSES)},
            "tissue_classes": list(L.TISSUE),
            "conventions": {
                "dice_absent_in_both": None,
                "hd95_absent_in_either": None,
                "hd95_unit": "mm",
                "means": "NaN (null) values are skipped",
            },
            "dice": {str(c): clean(v) for c, v in self.mean_dice.items()},
            "tissue_dice": clean(self.tissue_dice),
            "mean_dice": clean(self.all_classes_dice),
            "hd95": {str(c): clean(v) for c, v in self.mean_hd95.items()},
            "tissue_hd95": clean(self.tissue_hd95),
            "subjects": [
                {
                    "id": s.id,
                    "dice": {str(c): clean(v) for c, v in s.dice.items()},
                    "tissue_dice": clean(s.tissue_dice),
                    "mean_dice": clean(s.mean_dice),
                    "hd95": {str(c): clean(v) for c, v in s.hd95.items()},
                    "tissue_hd95": clean(s.tissue_hd95),
                    "seconds": clean(s.seconds),
                }
                for s in self.subjects
            ],
        }

    def to_text(self) -> str:
        """A table for people: one row per class, then the tissue and all-class means."""
        names = L.class_names()
        md, mh = self.mean_dice, self.mean_hd95

        def f(v: float, fmt: str) -> str:
            return "n/a" if math.isnan(v) else format(v, fmt)

        lines = [
            f"{len(self.subjects)} subject(s)"
            + (f", checkpoint {self.checkpoint}" if self.checkpoint else "")
        ]
        lines.append(f"{'class':<36}{'Dice':>8}{'HD95 mm':>10}")
        for c in range(L.NUM_CLASSES):
            lines.append(f"{c} {names[c]:<34}{f(md[c], '.4f'):>8}{f(mh[c], '.2f'):>10}")
        lines.append(
            f"{'tissue mean (' + ','.join(map(str, L.TISSUE)) + ')':<36}"
            f"{f(self.tissue_dice, '.4f'):>8}{f(self.tissue_hd95, '.2f'):>10}"
        )
        lines.append(f"{'all classes mean':<36}{f(self.all_classes_dice, '.4f'):>8}")
        return "\n".join(lines)


def evaluate_arrays(
    subject_id: str,
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    hd95: bool = True,
) -> SubjectMetrics:
    """Metrics of one prediction against its reference (HD95 only for a dense reference)."""
    ref = L.validate_label(ref, image_shape=np.asarray(pred).shape, what=f"reference label of {subject_id}")
    dice = dice_per_class(pred, ref)
    if hd95 and not L.is_partial(ref):
        hd = hd95_per_class(pred, ref, spacing)
    else:
        hd = {c: math.nan for c in range(L.NUM_CLASSES)}
    return SubjectMetrics(subject_id, dice, hd)


def evaluate_predictor(
    predictor: Predictor,
    subjects: Sequence,
    *,
    hd95: bool = True,
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Predict every labelled subject with ``predictor`` and score it (subjects without a label are skipped)."""
    labelled = [s for s in subjects if getattr(s, "label", None) is not None]
    if not labelled:
        raise EvaluationError("no subject with a reference label to evaluate")
    report = EvaluationReport()
    for s in labelled:
        images = [s.modality(m) for m in predictor.preprocess_cfg.modalities]
        t0 = time.perf_counter()
        pred, affine = predictor.predict(images)
        dt = time.perf_counter() - t0
        ref = load_volume(s.label)
        L.validate_label(
            ref.data,
            image_shape=pred.shape,
            label_affine=ref.affine,
            image_affine=affine,
            what=f"label of {s.id}",
        )
        spacing = tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
        m = evaluate_arrays(s.id, pred, ref.data, spacing, hd95=hd95)
        m.seconds = dt
        report.subjects.append(m)
        if progress is not None:
            progress(f"{s.id}: tissue Dice {m.tissue_dice:.4f}, {dt:.1f} s")
    return report


def evaluate_checkpoint(
    ckpt: str | Path,
    subjects: Sequence,
    *,
    device: str | None = None,
    hd95: bool = True,
    progress: Callable[[str], None] | None = None,
    **predictor_kwargs,
) -> EvaluationReport:
    """Load ``ckpt`` into a fast :class:`~training.infer.predictor.Predictor` and evaluate it on ``subjects``."""
    predictor = Predictor.from_checkpoint(ckpt, device=device, **predictor_kwargs)
    report = evaluate_predictor(predictor, subjects, hd95=hd95, progress=progress)
    report.checkpoint = str(ckpt)
    return report
