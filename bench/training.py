"""Benchmark: the `cpu` preset on a synthetic set, full labels vs 33% of axial slices (masked loss).

Not a test. Generates (or reuses) a synthetic dHCP-layout set, holds out the last subjects for
testing, trains the same configuration twice with the same number of iterations — once on full
labels, once on partial labels that keep every 3rd axial slice within the brain (255 elsewhere) —
and reports held-out tissue Dice for both. It also times training iterations with the masked loss
and with MONAI's unmasked ``DiceCELoss`` side by side (interleaved, same model, same batches).

    .venv/bin/python bench/training.py --out bench/out/training --minutes 10

Writes ``<out>/results_<conditions>.json`` (and ``timing.json``); prints a summary. On a shared
machine, run the conditions as separate processes with a fixed ``--iterations`` (the same CPU work
for both) and ``--timing only`` once; the timing interleaves both losses, so contention cancels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere (and never pick up another top-level `training`)
    sys.path.insert(0, str(ROOT))

from training.data.dataset import open_dataset  # noqa: E402
from training.data.labels import BRAIN, IGNORE  # noqa: E402
from training.data.nifti import load_volume  # noqa: E402


def axial_partial(label: np.ndarray, affine: np.ndarray, every: int = 3) -> tuple[np.ndarray, int, list[int]]:
    """Keep every ``every``-th axial slice that contains brain; 255 elsewhere."""
    codes = nib.aff2axcodes(affine)
    ax = next(i for i, c in enumerate(codes) if c in ("S", "I"))
    other = tuple(a for a in range(3) if a != ax)
    brain_slices = np.flatnonzero(np.isin(label, BRAIN).any(axis=other))
    keep = brain_slices[::every]
    partial = np.full_like(label, IGNORE)
    idx = [slice(None)] * 3
    for k in keep:
        idx[ax] = int(k)
        partial[tuple(idx)] = label[tuple(idx)]
    return partial, ax, [int(k) for k in keep]


def time_losses(cases, net_cfg, n: int = 12, threads: int = 2) -> dict:
    """Per-iteration time (forward + loss + backward + step) with masked vs unmasked loss, interleaved."""
    import torch
    from monai.losses import DiceCELoss

    from training.fit.loss import MaskedDiceCELoss
    from training.fit.sampling import PatchDataset
    from training.model.network import build_network

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_network(net_cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ds = PatchDataset(cases, tuple(net_cfg.patch_size), 4 * n, None, seed=1)
    masked = MaskedDiceCELoss(num_classes=net_cfg.out_channels)
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def unmasked(out, y):
        heads = torch.unbind(out, 1) if out.ndim == 6 else [out]
        w = [1.0 / 2**i for i in range(len(heads))]
        return sum(wi / sum(w) * dice_ce(h, y) for wi, h in zip(w, heads, strict=True))

    times: dict[str, list[float]] = {"masked": [], "unmasked": []}
    loss_only: dict[str, list[float]] = {"masked": [], "unmasked": []}
    for i in range(n + 2):
        batch = [ds[2 * i], ds[2 * i + 1]]
        x = torch.stack([b["image"] for b in batch])
        y = torch.stack([b["label"] for b in batch]).long()
        order = ("masked", "unmasked") if i % 2 == 0 else ("unmasked", "masked")
        for name in order:
            fn = masked if name == "masked" else unmasked
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = model(x)
            t1 = time.perf_counter()
            loss = fn(out, y)
            t2 = time.perf_counter()
            loss.backward()
            opt.step()
            t3 = time.perf_counter()
            if i >= 2:  # warm-up
                times[name].append(t3 - t0)
                loss_only[name].append(t2 - t1)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med_loss = {k: float(np.median(v)) for k, v in loss_only.items()}
    return {"s_per_iteration": med, "ratio_masked_over_unmasked": med["masked"] / med["unmasked"],
            "loss_forward_s": med_loss, "n": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "training")
    ap.add_argument("--data", type=Path, default=None, help="existing study set (default: generate into OUT/data)")
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--test", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per condition")
    ap.add_argument("--iterations", type=int, default=None, help="total iterations (default: from calibration)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conditions", default="full,axial33")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--timing-n", type=int, default=12, help="interleaved iterations per loss for the timing")
    ap.add_argument("--timing", choices=("run", "skip", "only"), default="run")
    ap.add_argument("--wall-limit-min", type=float, default=None, help="safety stop per condition (wall clock)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from training.data.preprocess import PreprocessConfig, preprocess_subject
    from training.fit.sampling import make_case
    from training.fit.train import TrainConfig, train, validate
    from training.metrics import tissue_mean
    from training.model.network import network_config

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or out / "data"
    if not (data / "participants.tsv").exists():
        from training.data.synthetic.write import write_study_set

        t0 = time.perf_counter()
        write_study_set(data, args.subjects, seed=args.seed)
        logging.info("generated %d subjects in %.0f s", args.subjects, time.perf_counter() - t0)
    subs = open_dataset(data).with_labels()
    train_subs, test_subs = subs[: -args.test], subs[-args.test:]

    partial, kept_fraction = {}, []
    for s in train_subs:
        v = load_volume(s.label)
        p, ax, keep = axial_partial(np.asarray(v.data).astype(np.uint8), v.affine)
        partial[s.id] = p
        kept_fraction.append(float((p != IGNORE).mean()))
    logging.info("partial labels: axial voxel axis %d, %.1f%% of voxels annotated", ax, 100 * np.mean(kept_fraction))

    patch = (args.patch,) * 3 if args.patch else None
    net_cfg = network_config("cpu", patch_size=patch)
    pcfg = PreprocessConfig()
    cases = [make_case(s.id, pp.image, pp.label) for s in train_subs
             for pp in [preprocess_subject(s, pcfg)]]
    timing = None
    if args.timing != "skip":
        timing = time_losses(cases, net_cfg, n=args.timing_n, threads=args.threads)
        logging.info("masked/unmasked iteration time ratio %.3f (%s)", timing["ratio_masked_over_unmasked"],
                     timing["s_per_iteration"])
        (out / "timing.json").write_text(json.dumps(timing, indent=2))
        if args.timing == "only":
            print(json.dumps(timing, indent=2))
            return 0

    # iterations: same for both conditions, sized from the measured iteration time (+ ~15% for augmentation)
    if args.iterations is None and timing is None:
        ap.error("--timing skip needs --iterations")
    total = args.iterations or max(
        args.epochs, int(args.minutes * 60 / (max(timing["s_per_iteration"].values()) * 1.15)))
    per_epoch = max(1, total // args.epochs)
    results: dict = {"timing": timing, "iterations_total": per_epoch * args.epochs, "n_train": len(train_subs),
                     "n_test": len(test_subs), "annotated_fraction_partial": float(np.mean(kept_fraction)),
                     "conditions": {}}
    test_cases = [make_case(s.id, pp.image, pp.label, 1) for s in test_subs for pp in [preprocess_subject(s, pcfg)]]
    for cond in args.conditions.split(","):
        cfg = TrainConfig(preset="cpu", epochs=args.epochs, iterations_per_epoch=per_epoch, batch_size=2,
                          threads=args.threads, seed=args.seed, lr=args.lr, patch_size=patch,
                          time_limit_s=(args.wall_limit_min or args.minutes) * 60, tensorboard=False)
        t0 = time.perf_counter()
        res = train(cfg, train_subs, out / cond, partial_labels=partial if cond == "axial33" else None,
                    progress=False)
        wall = time.perf_counter() - t0
        from training.model.checkpoint import load_checkpoint

        ck = load_checkpoint(res.last_path)
        v = validate(ck.model, test_cases, tuple(ck.network.patch_size), torch.device("cpu"))
        results["conditions"][cond] = {
            "test_tissue_dice": v["tissue_dice"], "test_dice": v["dice"],
            "per_subject_tissue_dice": [s["tissue_dice"] for s in v["subjects"]],
            "train_minutes": wall / 60, "epochs": res.epochs_completed, "stopped_early": res.stopped_early,
            "s_per_iteration": float(np.mean([h["s_per_iteration"] for h in res.history])),
            "final_loss": res.history[-1]["loss"],
        }
        logging.info("%s: held-out tissue Dice %.4f (%.1f min, %d epochs)", cond, v["tissue_dice"], wall / 60,
                     res.epochs_completed)
        assert abs(tissue_mean(v["dice"]) - v["tissue_dice"]) < 1e-9
        (out / f"results_{args.conditions.replace(',', '_')}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "conditions"} | {
        c: {k: r[k] for k in ("test_tissue_dice", "train_minutes", "epochs", "s_per_iteration")}
        for c, r in results["conditions"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
