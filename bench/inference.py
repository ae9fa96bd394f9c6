"""Inference benchmark: the paper's sliding-window settings vs the fast Predictor, same weights.

    .venv/bin/python bench/inference.py [--ckpt PATH] [--variants a,b] [--json OUT] [--threads 2]

On a generated dHCP-size volume (217×290×290 at 0.5 mm, ``training.data.synthetic.write.generate_subject``):

1. weights: ``--ckpt`` (a neolabel checkpoint, e.g. from ``bench/gpu_train.py``), or a brief
   training of the paper network (DynUNet, 6 levels, 32–320 filters; ``network_config("paper")``)
   on random 128³ crops of a few generated 0.5 mm subjects (AdamW, bf16 autocast), saved to
   ``--save-ckpt`` for later runs; ``--train-init`` continues an earlier one (session 2's results
   in ``bench/results/inference`` used 211 + 241 iterations, 28 + 30 min on 2 cores);
2. times the baseline (roi = training patch 128³, overlap 0.5, constant blending, sw_batch 1, fp32,
   whole volume) and the fast predictor (``Predictor(fast=True)``) in the same process; with
   ``--baseline-windows K`` only K baseline windows are timed and the total is extrapolated, with
   ``--baseline-cache F`` an earlier run's baseline label is reused (both said so in the output;
   for exploration only);
3. reports seconds per volume, speed-up, peak memory (RSS high-water mark above the phase's start,
   sampled every 20 ms), Dice between the two predictions and of each against the ground truth;
   ``--variants`` also times variants of the fast settings (patch-size windows, margins, fp32, ...).

The last line is ``speedup=<ratio> fast_s=<seconds> baseline_s=<seconds> agreement_dice=<dice>``
(agreement = mean Dice over the classes present in either label, fast vs baseline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

# bench/ holds scripts named like packages (bench/training.py): keep the script folder off sys.path
# so ``import training`` finds the package, not a sibling script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


class PeakRSS:
    """Peak resident memory (bytes above the start) of this process during a ``with`` block."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.rss()
        self.peak = self.start
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_gb(self) -> float:
        return (self.peak - self.start) / 1e9


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def quick_train(
    out: Path,
    minutes: float,
    crop: int,
    n_subjects: int,
    seed: int,
    batch: int,
    preset: str = "paper",
    lr: float = 1e-3,
    init: Path | None = None,
) -> Path:
    """Train a preset's network briefly on random crops of generated 0.5 mm subjects; save a checkpoint."""
    import torch

    from training.data.nifti import Volume
    from training.data.preprocess import PreprocessConfig, preprocess
    from training.data.synthetic.write import generate_subject
    from training.fit.loss import MaskedDiceCELoss
    from training.fit.sampling import PatchDataset, make_case
    from training.model.checkpoint import save_checkpoint
    from training.model.network import build_network, network_config
    from training.model.norms import with_fast_instance_norm

    torch.manual_seed(seed)
    net_cfg = network_config(preset)
    pcfg = PreprocessConfig()
    cases = []
    ages = np.linspace(32.0, 44.0, n_subjects)
    t0 = time.perf_counter()
    for i, age in enumerate(ages):
        s = generate_subject(float(age), seed=1000 + seed + i, shape=(217, 290, 290), spacing=0.5)
        pp = preprocess([Volume(s.t2w, s.affine)], s.label, pcfg)
        cases.append(make_case(f"train{i}", pp.image, pp.label, 20000, seed + i))
    print(f"[train] generated {n_subjects} subjects in {time.perf_counter() - t0:.0f} s", flush=True)
    ds = PatchDataset(cases, (crop, crop, crop), 10**6, None, None, seed=seed)
    final = build_network(net_cfg)
    done_before = 0
    if init is not None:  # continue an earlier quick training (weights only; AdamW restarts)
        from training.model.checkpoint import load_checkpoint

        earlier = load_checkpoint(init)
        final.load_state_dict(earlier.model.state_dict())
        done_before = int(earlier.train_config.get("iterations", 0))
    # same maths as InstanceNorm3d, 1.4× faster per 128³ training iteration on CPU (measured 7.2 vs 10.2 s);
    # the state dicts have the same keys, so the weights go back into the plain network at the end
    model = with_fast_instance_norm(final).to(memory_format=torch.channels_last_3d)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=3e-5)
    loss_fn = MaskedDiceCELoss(num_classes=net_cfg.out_channels)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    it = 0
    losses: list[float] = []
    while time.perf_counter() - t0 < minutes * 60:
        items = [ds[it * batch + b] for b in range(batch)]
        x = torch.stack([d["image"] for d in items])
        y = torch.stack([d["label"] for d in items])
        for ax in (2, 3, 4):  # mirror augmentation (drawem9 has no left/right classes)
            if rng.random() < 0.5:
                x, y = torch.flip(x, (ax,)), torch.flip(y, (ax,))
        x = x.contiguous(memory_format=torch.channels_last_3d)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            heads = model(x)
        loss = loss_fn(heads.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        losses.append(float(loss.detach()))
        it += 1
        if it % 10 == 0:
            print(
                f"[train] it {it} loss {np.mean(losses[-10:]):.4f} ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    final.load_state_dict(model.to(memory_format=torch.contiguous_format).state_dict())
    final.eval()
    save_checkpoint(
        out,
        final,
        network=net_cfg,
        preprocess=pcfg,
        train_config={
            "bench": "inference quick_train",
            "crop": crop,
            "iterations": done_before + it,
            "batch": batch,
            "minutes": minutes,
            "optimizer": "adamw",
            "lr": lr,
        },
        epoch=1,
        metrics={"final_loss": float(np.mean(losses[-10:])) if losses else None},
    )
    print(f"[train] {it} iterations, saved {out}", flush=True)
    return out


def dice_summary(pred: np.ndarray, ref: np.ndarray) -> dict:
    from training.metrics import dice_per_class, tissue_mean

    d = dice_per_class(pred, ref)
    vals = [v for v in d.values() if not math.isnan(v)]
    return {
        "mean": float(np.mean(vals)),
        "tissue": tissue_mean(d),
        "per_class": {k: round(v, 4) for k, v in d.items()},
    }


def timed(predictor, vol) -> tuple[np.ndarray, float, float, dict]:
    with PeakRSS() as mem:
        t, c = time.perf_counter(), time.process_time()
        label, _ = predictor.predict([vol])
        dt, cpu = time.perf_counter() - t, time.process_time() - c
    st = predictor.last_stats
    info = {
        "cpu_s": round(cpu, 1),
        "roi": list(st.roi_size),
        "crop_shape": list(st.crop_shape),
        "windows": st.windows,
        "skipped": st.skipped,
        "fp32_fallbacks": st.fp32_fallbacks,
        "autocast": st.autocast,
        "s_preprocess": round(st.seconds_preprocess, 2),
        "s_network": round(st.seconds_network, 2),
        "s_restore": round(st.seconds_restore, 2),
        **st.extra,
    }
    return label, dt, mem.peak_gb, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--ckpt", type=Path, help="checkpoint to use (default: train briefly, see --train-minutes)"
    )
    ap.add_argument("--save-ckpt", type=Path, default=Path("/tmp/neolabel-bench/paper-quick.pt"))
    ap.add_argument("--train-minutes", type=float, default=12.0)
    ap.add_argument("--train-crop", type=int, default=128, help="training crop (the paper: 128 = patch size)")
    ap.add_argument("--train-lr", type=float, default=1e-3)
    ap.add_argument("--train-init", type=Path, help="continue training from this quick-trained checkpoint")
    ap.add_argument("--train-batch", type=int, default=1)
    ap.add_argument("--train-subjects", type=int, default=3)
    ap.add_argument("--preset", default="paper", help="network preset trained when no --ckpt (paper | cpu)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--baseline-windows",
        type=int,
        default=0,
        help="time only K baseline windows and extrapolate (0 = run the full baseline)",
    )
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument(
        "--baseline-cache",
        type=Path,
        help="exploration only: reuse the baseline label saved here by an earlier run (said so in the output)",
    )
    ap.add_argument("--ablation", action="store_true", help="also time variants of the fast settings")
    ap.add_argument("--variants", default="", help="comma-separated subset of the ablation variants to run")
    ap.add_argument("--age", type=float, default=40.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, help="write all numbers here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from training.data.nifti import Volume
    from training.data.synthetic.write import generate_subject
    from training.infer.predictor import Predictor
    from training.model.checkpoint import load_checkpoint

    ckpt = args.ckpt
    if ckpt is None:
        if args.save_ckpt.is_file():
            ckpt = args.save_ckpt
            print(f"using the checkpoint from an earlier run: {ckpt}")
        else:
            args.save_ckpt.parent.mkdir(parents=True, exist_ok=True)
            ckpt = quick_train(
                args.save_ckpt,
                args.train_minutes,
                args.train_crop,
                args.train_subjects,
                0,
                args.train_batch,
                args.preset,
                args.train_lr,
                args.train_init,
            )
    if args.train_only:
        return
    ck = load_checkpoint(ckpt)
    n_params = sum(p.numel() for p in ck.model.parameters())
    print(
        f"network: preset {ck.network.preset}, filters {list(ck.network.filters)}, "
        f"{len(ck.network.strides)} levels, {n_params / 1e6:.1f} M parameters, "
        f"patch {list(ck.network.patch_size)}; threads {torch.get_num_threads()}"
    )
    s = generate_subject(args.age, seed=args.seed, shape=(217, 290, 290), spacing=0.5)
    vol = Volume(s.t2w, s.affine)
    gt = s.label
    print(f"volume {vol.shape} at 0.5 mm, scan age {args.age}; load average before: {loadavg()}")
    results: dict = {"threads": torch.get_num_threads(), "checkpoint": str(ckpt), "params_M": n_params / 1e6}

    fast = Predictor(ck.model, ck.network, ck.preprocess, device="cpu", fast=True)
    print("fast settings:", json.dumps(fast.describe()))
    fast_label, fast_s, fast_mem, fast_info = timed(fast, vol)
    results["fast"] = {
        "seconds": fast_s,
        "peak_rss_gb": fast_mem,
        **fast_info,
        "dice_vs_gt": dice_summary(fast_label, gt),
    }
    print(f"fast: {fast_s:.1f} s, peak +{fast_mem:.2f} GB, {fast_info}")
    print(f"fast vs GT: {results['fast']['dice_vs_gt']}")

    base_label = None
    baseline_s = math.nan
    ref = Predictor(ck.model, ck.network, ck.preprocess, device="cpu", fast=False)
    cache_key = f"{Path(ckpt).resolve()}:{os.path.getmtime(ckpt)}:{args.age}:{args.seed}"
    if args.baseline_cache and args.baseline_cache.is_file():
        cached = np.load(args.baseline_cache, allow_pickle=False)
        if str(cached["key"]) == cache_key:
            base_label, baseline_s = cached["label"], float(cached["seconds"])
            results["baseline"] = {
                "seconds": baseline_s,
                "cached": str(args.baseline_cache),
                "dice_vs_gt": dice_summary(base_label, gt),
            }
            print(f"baseline: {baseline_s:.1f} s, CACHED from an earlier run ({args.baseline_cache})")
            args.skip_baseline = True
    if not args.skip_baseline and args.baseline_windows <= 0:
        print(f"baseline (paper settings, full run): load average {loadavg()}", flush=True)
        inner = ref._window_logits
        win_times: list[float] = []

        def logged(x):
            t = time.perf_counter()
            y = inner(x)
            win_times.append(time.perf_counter() - t)
            if len(win_times) % 4 == 0:
                print(
                    f"  baseline window {len(win_times)}: mean {np.mean(win_times):.2f} s/window", flush=True
                )
            return y

        ref._window_logits = logged
        base_label, baseline_s, base_mem, base_info = timed(ref, vol)
        results["baseline"] = {
            "seconds": baseline_s,
            "peak_rss_gb": base_mem,
            "extrapolated": False,
            **base_info,
            "dice_vs_gt": dice_summary(base_label, gt),
        }
        print(f"baseline: {baseline_s:.1f} s, peak +{base_mem:.2f} GB, {base_info}")
        print(f"baseline vs GT: {results['baseline']['dice_vs_gt']}")
        if args.baseline_cache:
            np.savez_compressed(args.baseline_cache, key=cache_key, label=base_label, seconds=baseline_s)
    elif not args.skip_baseline:
        from monai.data.utils import dense_patch_slices

        from training.data.preprocess import preprocess

        pre = preprocess([vol], None, ck.preprocess)
        roi = ref.settings.roi_size
        from monai.inferers.utils import _get_scan_interval

        shape = pre.image.shape[1:]
        slices = dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, 3, (0.5,) * 3))
        n_total = len(slices)
        x = torch.as_tensor(pre.image)[None]
        times, cpus = [], []
        with torch.inference_mode(), PeakRSS() as mem:
            for sl in slices[len(slices) // 2 : len(slices) // 2 + args.baseline_windows]:
                t, c = time.perf_counter(), time.process_time()
                ref._window_logits(x[(slice(None), slice(None), *sl)].contiguous())
                times.append(time.perf_counter() - t)
                cpus.append(time.process_time() - c)
                print(f"  baseline window: {times[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU", flush=True)
        per = float(np.mean(times))
        baseline_s = per * n_total
        results["baseline_cpu_s_extrapolated"] = float(np.mean(cpus)) * n_total
        results["baseline"] = {
            "seconds": baseline_s,
            "extrapolated": True,
            "windows_timed": len(times),
            "windows_total": n_total,
            "s_per_window": per,
            "peak_rss_gb": mem.peak_gb,
        }
        print(
            f"baseline EXTRAPOLATED from {len(times)} of {n_total} windows: {per:.2f} s/window "
            f"→ {baseline_s:.0f} s per volume (network only; not a measured full run)"
        )

    agreement = math.nan
    if base_label is not None:
        a = dice_summary(fast_label, base_label)
        agreement = a["mean"]
        results["agreement"] = a
        results["agreement_voxels"] = float((fast_label == base_label).mean())
        print(f"fast vs baseline: {a}; identical voxels {results['agreement_voxels']:.5f}")
        differ = fast_label != base_label
        if differ.any():
            results["where_they_differ"] = {
                "voxels": int(differ.sum()),
                "fast_matches_gt": float((fast_label[differ] == gt[differ]).mean()),
                "baseline_matches_gt": float((base_label[differ] == gt[differ]).mean()),
            }
            print(f"where fast and baseline differ: {results['where_they_differ']}")

    if args.ablation or args.variants:
        variants = {
            "patch_windows": {"large_windows": False},
            "margin8": {"head_margin_mm": 8.0},
            "no_head_retry": {"head_retries": 0},
            "no_roi_to_box": {"roi_to_box": False},
            "fp32": {"precision": "fp32"},
            "no_head_crop": {"head_crop": False},
            "patch_windows_overlap0.5_gaussian": {"large_windows": False, "overlap": 0.5},
            "patch_windows_overlap0": {"large_windows": False, "overlap": 0.0},
            "two_windows": {"roi_size": (224, 160, 224)},
            "tta": {"tta": True},
        }
        if args.variants:
            variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
        results["ablation"] = {}
        for name, kw in variants.items():
            p = Predictor(ck.model, ck.network, ck.preprocess, device="cpu", fast=True, **kw)
            lab, dt, mem, info = timed(p, vol)
            r = {
                "seconds": dt,
                "cpu_s": info["cpu_s"],
                "peak_rss_gb": mem,
                "windows": info["windows"],
                "roi": info["roi"],
                "dice_vs_gt": dice_summary(lab, gt)["mean"],
            }
            if base_label is not None:
                r["agreement"] = dice_summary(lab, base_label)["mean"]
            results["ablation"][name] = r
            print(f"ablation {name}: {json.dumps(r)} (load {loadavg()})", flush=True)

    results["load_average_after"] = loadavg()
    speedup = baseline_s / fast_s if fast_s > 0 else math.nan
    base_cpu = results.get("baseline", {}).get("cpu_s", results.get("baseline_cpu_s_extrapolated", math.nan))
    fast_cpu = results["fast"]["cpu_s"]
    results["speedup_cpu_time"] = base_cpu / fast_cpu if fast_cpu > 0 else math.nan
    print(
        f"CPU time (robust to other load on the machine): baseline {base_cpu:.0f} s, fast {fast_cpu:.0f} s, "
        f"ratio {results['speedup_cpu_time']:.1f}; on an unloaded machine wall ≈ CPU / threads: "
        f"fast ≈ {fast_cpu / results['threads']:.0f} s, baseline ≈ {base_cpu / results['threads']:.0f} s"
    )
    results.update(speedup=speedup, fast_s=fast_s, baseline_s=baseline_s, agreement_dice=agreement)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"load average after: {loadavg()} (other processes on this machine inflate both timings)")
    print(
        f"speedup={speedup:.1f} fast_s={fast_s:.1f} baseline_s={baseline_s:.1f} "
        f"agreement_dice={agreement:.4f}"
    )


if __name__ == "__main__":
    main()
