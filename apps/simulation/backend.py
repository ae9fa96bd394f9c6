"""The training / evaluation / prediction functions the simulation calls, behind small interfaces.

The simulation only does bookkeeping (which scans, which slices, which results); the heavy work
goes through three callables so tests about bookkeeping can swap in fast fakes while the default
run (and at least one test) uses the real :mod:`training` code:

* ``train_fn(job: TrainJob) -> TrainOutcome``
* ``evaluate_fn(checkpoint: Path, subjects: list[Subject]) -> Scores``
* ``probabilities_fn(checkpoint: Path, subject: Subject) -> np.ndarray`` ``(C, X, Y, Z)`` (loop mode,
  uncertainty strategy only)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import labels as L


@dataclass
class TrainJob:
    """One model to train: its subjects, their (partial) labels and where to write the checkpoint."""

    name: str
    seed: int
    subjects: list  # training.data.dataset.Subject
    partial_labels: dict[str, np.ndarray | Path]  # id -> uint8 label (255 = not annotated) or a dense label file
    out_dir: Path
    epochs: int
    init: Path | None = None  # warm start checkpoint (loop mode)
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides
    progress: bool = True


@dataclass
class TrainOutcome:
    checkpoint: Path
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scores:
    """Held-out metrics of one model: mean over test subjects per class, tissue means (NaN = undefined)."""

    dice: dict[int, float]
    hd95: dict[int, float]
    tissue_dice: float
    tissue_hd95: float
    mean_dice: float
    n_subjects: int
    seconds: float = math.nan

    def to_json(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        return {
            "dice": {str(k): clean(v) for k, v in self.dice.items()},
            "hd95": {str(k): clean(v) for k, v in self.hd95.items()},
            "tissue_dice": clean(self.tissue_dice),
            "tissue_hd95": clean(self.tissue_hd95),
            "mean_dice": clean(self.mean_dice),
            "n_subjects": self.n_subjects,
            "seconds": clean(self.seconds),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Scores:
        def f(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(
            dice={int(k): f(v) for k, v in d["dice"].items()},
            hd95={int(k): f(v) for k, v in d["hd95"].items()},
            tissue_dice=f(d.get("tissue_dice")),
            tissue_hd95=f(d.get("tissue_hd95")),
            mean_dice=f(d.get("mean_dice")),
            n_subjects=int(d.get("n_subjects", 0)),
            seconds=f(d.get("seconds")),
        )


TrainFn = Callable[[TrainJob], TrainOutcome]
EvaluateFn = Callable[[Path, Sequence[Any]], Scores]
ProbabilitiesFn = Callable[[Path, Any], np.ndarray]


def _known_fields(cls: type, values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    known = set(getattr(cls, "__dataclass_fields__", {}))
    return {k: v for k, v in values.items() if k in known}, sorted(k for k in values if k not in known)


def make_train_config(epochs: int, seed: int, settings: Mapping[str, Any]):
    """A ``training.fit.train.TrainConfig`` with ``epochs``, ``seed`` and the run's settings.

    Settings that this TrainConfig does not have raise a clear error (a typo must not silently
    change what is simulated).
    """
    from training.fit.train import TrainConfig

    values = dict(settings)
    values["epochs"] = int(epochs)
    values["seed"] = int(seed)
    ok, unknown = _known_fields(TrainConfig, values)
    if unknown:
        raise ValueError(f"unknown training setting(s) {', '.join(unknown)} for training.fit.train.TrainConfig")
    return TrainConfig(**ok)


def real_train(job: TrainJob) -> TrainOutcome:
    """Train with :func:`training.fit.train.train` on the job's partial labels (warm start from ``job.init``)."""
    from training.fit.train import train

    cfg = make_train_config(job.epochs, job.seed, job.settings)
    t0 = time.perf_counter()
    result = train(
        cfg,
        job.subjects,
        job.out_dir,
        partial_labels=job.partial_labels,
        val_subjects=None,
        init=job.init,
        progress=job.progress,
    )
    seconds = time.perf_counter() - t0
    ckpt = _result_checkpoint(result, job.out_dir)
    history = list(getattr(result, "history", []) or [])
    info: dict[str, Any] = {
        "epochs_completed": getattr(result, "epochs_completed", None),
        "n_train": getattr(result, "n_train", None),
        "final_loss": history[-1].get("loss") if history else None,
        "s_per_iteration": history[-1].get("s_per_iteration") if history else None,
    }
    return TrainOutcome(checkpoint=ckpt, seconds=seconds, info=info)


def _result_checkpoint(result: Any, out_dir: Path) -> Path:
    for attr in ("best_path", "last_path", "checkpoint"):
        val = getattr(result, attr, None)
        if val is not None and Path(val).is_file():
            return Path(val)
    cands = sorted(Path(out_dir).glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not cands:
        raise FileNotFoundError(f"training wrote no checkpoint under {out_dir}")
    return cands[-1]


def scores_from_report(report: Any, seconds: float = math.nan) -> Scores:
    """Convert a :class:`training.evaluate.segmentation.EvaluationReport`."""
    return Scores(
        dice=dict(report.mean_dice),
        hd95=dict(report.mean_hd95),
        tissue_dice=float(report.tissue_dice),
        tissue_hd95=float(report.tissue_hd95),
        mean_dice=float(report.all_classes_dice),
        n_subjects=len(report.subjects),
        seconds=seconds,
    )


def real_evaluate(checkpoint: Path, subjects: Sequence[Any]) -> Scores:
    """Dice per class, tissue mean and HD95 on dense test labels (``evaluate_checkpoint``)."""
    from training.evaluate.segmentation import evaluate_checkpoint

    t0 = time.perf_counter()
    report = evaluate_checkpoint(checkpoint, list(subjects), device="cpu", hd95=True)
    return scores_from_report(report, time.perf_counter() - t0)


class RealProbabilities:
    """Predicted class probabilities in the image grid; caches one Predictor per checkpoint."""

    def __init__(self) -> None:
        self._ckpt: Path | None = None
        self._predictor: Any = None

    def __call__(self, checkpoint: Path, subject: Any) -> np.ndarray:
        from training.infer.predictor import Predictor

        if self._ckpt != Path(checkpoint):
            self._predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
            self._ckpt = Path(checkpoint)
        images = [subject.modality(m) for m in self._predictor.preprocess_cfg.modalities]
        probs, _ = self._predictor.predict_probabilities(images)
        return probs


def check_scores(scores: Scores) -> Scores:
    """Fill classes a backend left out with NaN (so tables always have every class)."""
    for c in range(L.NUM_CLASSES):
        scores.dice.setdefault(c, math.nan)
        scores.hd95.setdefault(c, math.nan)
    return scores
