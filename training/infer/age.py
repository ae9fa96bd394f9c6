"""AgeU-Net, the inference part: the scan age of a whole volume from patch-sized windows.

The head (:mod:`training.model.age`) was trained on patches, so it is asked on patches too:
windows of the training patch size tile the pre-processed volume (as in the sliding-window
segmentation) and the age is the mean of the window predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from training.model.age import AgeError, forward_with_age, has_age_head, weeks_from_normalised


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
