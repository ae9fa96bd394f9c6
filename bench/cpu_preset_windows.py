"""Window mode for the `cpu` preset: paper settings vs the fast predictor with patch-size and large windows.

    .venv/bin/python bench/training.py --conditions full --timing skip --iterations 600 --out OUT
    .venv/bin/python bench/cpu_preset_windows.py OUT/full/last.pt OUT/data

Predicts the last 4 subjects of the study set (held out by bench/training.py) with each setting and
prints seconds, windows, tissue Dice against the ground truth and agreement with the paper settings
(mean Dice over the classes present, and the fraction of identical voxels). The result decides
``large_windows`` for the preset in ``training/network.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from training.data.dataset import open_dataset
    from training.data.nifti import load_volume
    from training.infer.predictor import Predictor
    from training.metrics import dice_per_class, tissue_mean

    torch.set_num_threads(2)
    ckpt, data = sys.argv[1], sys.argv[2]
    subs = open_dataset(data).subjects[-4:]
    variants = {
        "reference": dict(fast=False),
        "fast_default": dict(fast=True),
        "large_windows": dict(fast=True, large_windows=True),
    }
    preds = {}
    for name, kw in variants.items():
        p = Predictor.from_checkpoint(ckpt, **kw)
        t = time.perf_counter()
        out = [p.predict(s.image)[0] for s in subs]
        preds[name] = (out, time.perf_counter() - t, p.last_stats)
    ref = preds["reference"][0]
    for name, (out, sec, st) in preds.items():
        gt = [tissue_mean(dice_per_class(o, load_volume(s.label).data)) for o, s in zip(out, subs, strict=True)]
        ag = [np.nanmean(list(dice_per_class(o, r).values())) for o, r in zip(out, ref, strict=True)]
        same = np.mean([np.mean(o == r) for o, r in zip(out, ref, strict=True)])
        print(
            f"{name:14s} {sec:6.1f}s windows={st.windows} roi={list(st.roi_size)} "
            f"tissueDice_vs_GT={np.mean(gt):.4f} agreement={np.mean(ag):.4f} identical={same:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
