"""Masked Dice + cross-entropy on partial labels (255 = not annotated), with deep supervision.

Only annotated voxels (``label != IGNORE``) contribute; softmax is taken over all classes *before*
masking, so changing logits where the label is 255 changes neither the loss nor any gradient.
(``monai.losses.MaskedLoss`` masks the logits before the softmax, which is wrong here.)

Dice: MONAI 1.6.1 ``DiceLoss(ignore_index=255, to_onehot_y=True, softmax=True)`` does the right
thing (read in monai/losses/dice.py: 255 ≥ n_classes is mapped to 0 before one-hot, the ignore mask
comes from the original target and multiplies softmax probabilities and one-hot target after the
softmax). We still compute the masked Dice here in a few lines because we want two things it lacks:
(1) classes with no annotated voxel in the batch are left out of the mean instead of contributing a
constant ≈1 with ≈0 gradient (with one annotated slice most classes are often absent), and (2) an
explicit, tested zero for a batch with nothing annotated.

Batch Dice (intersection/union summed over the batch before dividing, as nnU-Net's 3d_fullres):
partial labels leave few annotated voxels per patch, so per-sample Dice of a class with a handful
of voxels would be very noisy; pooling the batch gives every present class a stable estimate.

Cross-entropy: ``ignore_index=255`` summed and divided by the number of annotated voxels, clamped
to ≥ 1 so an empty selection gives 0 (finite, zero gradient) instead of NaN.

Deep supervision: DynUNet returns every head already interpolated (nearest) to full resolution,
stacked on dim 1. We compute each head's loss at *full resolution* against the same partial label
instead of down-sampling the target: a thin annotated slice cannot vanish at a coarse scale (nearest
down-sampling of the target would drop it, or invent a "255" there), and the ignore semantics are
exactly those of the full-resolution label. Weights 1/2^i over the returned outputs, normalised;
the lowest-resolution decoder output is excluded by the network config (see training/network.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.data.labels import IGNORE, NUM_CLASSES


def deep_supervision_weights(n_outputs: int) -> list[float]:
    """1/2^i for i = 0..n-1, normalised to sum 1 (full resolution first)."""
    w = [1.0 / (2**i) for i in range(n_outputs)]
    s = sum(w)
    return [x / s for x in w]


class MaskedDiceCELoss(nn.Module):
    """Dice + CE over annotated voxels only; accepts a plain or a deep-supervision (stacked) output."""

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE,
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        smooth: float = 1e-5,
        ds_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.smooth = float(smooth)
        self.ds_weights = list(ds_weights) if ds_weights is not None else None

    def _single(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor,
                onehot: torch.Tensor, n_annot: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)  # one softmax for both terms
        # CE: sum over annotated voxels / count (0 when nothing is annotated)
        ce = F.nll_loss(logp, target, ignore_index=self.ignore_index, reduction="sum") / n_annot.clamp_min(1)
        # Dice: softmax over all classes first, then mask (ignored voxels' probabilities are multiplied by 0)
        probs = logp.exp() * annotated
        dims = (0, *range(2, logits.ndim))
        tp = (probs * onehot).sum(dims)  # onehot is already 0 on ignored voxels
        psum = probs.sum(dims)
        tsum = onehot.sum(dims)
        dice = (2 * tp + self.smooth) / (psum + tsum + self.smooth)
        present = tsum > 0
        # nothing annotated: keep the graph with value 0 and gradient 0
        dice_loss = 1.0 - dice[present].mean() if bool(present.any()) else probs.sum() * 0.0
        return self.dice_weight * dice_loss + self.ce_weight * ce

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """``output``: (B, C, …) logits, (B, H, C, …) stacked heads or a list; ``label``: (B[,1], …) 0–9/255."""
        # 3D only: label (B, X, Y, Z) or (B, 1, X, Y, Z); output (B, C, X, Y, Z) or (B, H, C, X, Y, Z)
        target = label[:, 0] if label.ndim == 5 else label
        if target.ndim != 4:
            raise ValueError(f"label must be (B[,1],X,Y,Z), got shape {tuple(label.shape)}")
        if isinstance(output, torch.Tensor):
            heads = list(torch.unbind(output, dim=1)) if output.ndim == 6 else [output]
        else:
            heads = list(output)
        target = target.long()
        annotated_b = target != self.ignore_index
        n_annot = annotated_b.sum()
        safe = torch.where(annotated_b, target, torch.zeros_like(target))
        onehot = torch.zeros((target.shape[0], self.num_classes, *target.shape[1:]), device=target.device)
        onehot.scatter_(1, safe.unsqueeze(1), 1.0)
        onehot *= annotated_b.unsqueeze(1)
        annotated = annotated_b.unsqueeze(1).to(torch.float32)
        weights = self.ds_weights[: len(heads)] if self.ds_weights else deep_supervision_weights(len(heads))
        total = sum(w for w in weights)
        loss = heads[0].new_zeros((), dtype=torch.float32)
        for w, h in zip(weights, heads, strict=False):
            if w:
                loss = loss + (w / total) * self._single(h, target, annotated, onehot, n_annot)
        return loss
