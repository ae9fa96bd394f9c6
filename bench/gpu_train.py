"""Train the paper network on a GPU with the product trainer, for the inference bench's agreement check.

    python bench/gpu_train.py train --out DIR --minutes 5 [--subjects 12] [--workers 12]
    python bench/gpu_train.py join --parts DIR --out CKPT

``train`` (on the GPU machine) generates dHCP-size subjects (217×290×290 at 0.5 mm, in parallel),
calibrates seconds per iteration with a short run, then trains the ``paper`` preset with
``training.fit.train.train`` on CUDA (the product's GPU path: DataLoader workers, bf16 autocast,
validation, checkpoints) for as many iterations as fit ``--minutes``, so the poly schedule ends
where the time does. It then times the CUDA predictor (fast and paper settings) on the inference
bench's volume and writes ``best.pt`` as bf16 parts of ≤ 15 MiB (the device tool returns at most
16 MiB a file), with ``result.json``.

``join`` (here) puts the parts back together into a neolabel checkpoint (fp32 weights: the
bf16-rounded values, which are the model the bench then measures).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

SHAPE = (217, 290, 290)
PART_BYTES = 15 * 2**20


def _write_subject(args: tuple[Path, str, float, int, tuple[int, int, int], float]) -> str:
    from training.data.nifti import save_volume
    from training.data.synthetic.write import generate_subject

    root, sid, age, seed, shape, spacing = args
    s = generate_subject(age, seed=seed, shape=shape, spacing=spacing)
    save_volume(root / f"{sid}.nii", s.t2w, s.affine, dtype=np.float32)
    save_volume(root / "labels" / "final" / f"{sid}.nii", s.label, s.affine, dtype=np.uint8)
    return sid


def make_dataset(root: Path, n_train: int, workers: int, shape: tuple[int, int, int], spacing: float
                 ) -> tuple[Path, Path]:
    """Training subjects (ages 30–44 w) and one validation subject, as two MONAI Label studies folders."""
    train_dir, val_dir = root / "train", root / "val"
    for d in (train_dir, val_dir):
        (d / "labels" / "final").mkdir(parents=True, exist_ok=True)
    ages = np.linspace(30, 44, n_train)
    jobs = [(train_dir, f"train{i:02d}", float(a), 2000 + i, shape, spacing) for i, a in enumerate(ages)]
    jobs.append((val_dir, "val00", 38.5, 3000, shape, spacing))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_subject, jobs))
    return train_dir, val_dir


def train_cmd(a: argparse.Namespace) -> None:
    import torch

    from training.data.dataset import index_folder
    from training.fit.train import TrainConfig, train
    from training.model.checkpoint import load_checkpoint

    t_all = time.perf_counter()
    shape = tuple(int(round(n * 0.5 / a.spacing)) for n in SHAPE)  # dHCP field of view
    result: dict = {"torch": torch.__version__, "shape": shape, "spacing": a.spacing,
                    "device_name": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"}
    t0 = time.perf_counter()
    train_dir, val_dir = make_dataset(a.data, a.subjects, a.workers, shape, a.spacing)
    result["generate_s"] = time.perf_counter() - t0
    print(f"generated {a.subjects}+1 subjects in {result['generate_s']:.0f} s", flush=True)
    subjects = index_folder(train_dir).with_labels()
    val = index_folder(val_dir).with_labels()

    base = dict(preset="paper", batch_size=a.batch, optimizer=a.optimizer, lr=a.lr, device=a.device,
                num_workers=a.workers, tensorboard=False, seed=0)
    t0 = time.perf_counter()
    per_epoch = a.iterations_per_epoch or calibrate(a, base, subjects, result)
    result["calibration_wall_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    res = train(TrainConfig(epochs=a.epochs, iterations_per_epoch=per_epoch, **base), subjects, a.out / "run",
                val_subjects=val, progress=False,
                callback=lambda r: print(json.dumps({k: r[k] for k in r if k != "val_dice"}), flush=True))
    result["train"] = {"wall_s": time.perf_counter() - t0, "iterations": a.epochs * per_epoch,
                       "best_val_tissue_dice": res.best_metric, "history": res.history}

    result["inference"] = inference_check(load_checkpoint(res.best_path), a.device, shape, a.spacing)
    write_parts(res.best_path, a.parts)
    result["total_s"] = time.perf_counter() - t_all
    (a.parts / "result.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "train"}, default=str))


def calibrate(a: argparse.Namespace, base: dict, subjects: list, result: dict) -> int:
    """Iterations per epoch that fit ``--minutes``, from a short run (overestimates: it includes warm-up)."""
    from training.fit.train import TrainConfig, train

    calib = train(TrainConfig(epochs=1, iterations_per_epoch=a.calib_iterations, **base), subjects[:2],
                  a.out / "calib", progress=False)
    s_per_it = calib.history[-1]["s_per_iteration"]
    result["calibration"] = {"s_per_iteration": s_per_it}
    budget = a.minutes * 60 - 12 * a.epochs  # room for validation + checkpoints each epoch
    per_epoch = max(10, int(budget / a.epochs / s_per_it))
    print(f"calibration: {s_per_it:.3f} s/iteration → {a.epochs} epochs × {per_epoch} iterations", flush=True)

    return per_epoch


def inference_check(ck, device: str, shape: tuple[int, int, int], spacing: float) -> dict:
    """The predictor (fast and paper settings) on the inference bench's volume: seconds, Dice."""
    import torch

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    from training.data.nifti import Volume
    from training.data.synthetic.write import generate_subject
    from training.infer.predictor import Predictor
    from training.metrics import dice_per_class

    s = generate_subject(40.0, seed=7, shape=shape, spacing=spacing)  # bench/inference.py's volume
    vol = Volume(s.t2w, s.affine)
    out: dict = {}
    labels = {}
    for name, fast in (("fast", True), ("baseline", False)):
        try:
            p = Predictor(ck.model, ck.network, ck.preprocess, device=device, fast=fast)
            p.predict([vol])  # warm-up: cuDNN autotuning, allocator
            sync()
            t = time.perf_counter()
            lab, _ = p.predict([vol])
            sync()
            d = dice_per_class(lab, s.label)
            labels[name] = lab
            out[name] = {"seconds": time.perf_counter() - t, "settings": p.describe(),
                         "dice_vs_gt": float(np.nanmean(list(d.values()))),
                         "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}
        except Exception as exc:  # report, keep the trained weights
            out[name] = {"error": repr(exc)}
        print(f"{device} {name}: {out[name]}", flush=True)
    if len(labels) == 2:
        d = dice_per_class(labels["fast"], labels["baseline"])
        out["agreement_dice"] = float(np.nanmean(list(d.values())))
        out["agreement_per_class"] = {int(k): v for k, v in d.items()}
    return out


def _cast(state: dict, dtype) -> dict:
    """Floating tensors to ``dtype``, stored once per distinct value: DynUNet lists its skip layers
    under two names, and a checkpoint written from a GPU model holds separate copies of them."""
    import torch

    done: dict = {}
    out = {}
    for k, v in state.items():
        key = (tuple(v.shape), v.dtype, float(v.double().sum()), float(v.double().abs().sum()))
        hit = next((t for src, t in done.get(key, []) if torch.equal(src, v)), None)
        if hit is None:
            hit = v.to(dtype) if v.is_floating_point() else v
            done.setdefault(key, []).append((v, hit))
        out[k] = hit
    return out


def write_parts(ckpt: Path, parts: Path) -> None:
    import torch

    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["state_dict"] = _cast(raw["state_dict"], torch.bfloat16)
    raw.setdefault("extra", {})["weights"] = "bf16-rounded for transfer (bench/gpu_train.py)"
    buf = io.BytesIO()
    torch.save(raw, buf)
    data = buf.getvalue()
    parts.mkdir(parents=True, exist_ok=True)
    for i in range(math.ceil(len(data) / PART_BYTES)):
        (parts / f"best.part{i}").write_bytes(data[i * PART_BYTES:(i + 1) * PART_BYTES])
    print(f"best.pt: {len(data) / 2**20:.1f} MiB in {math.ceil(len(data) / PART_BYTES)} parts", flush=True)


def join_cmd(a: argparse.Namespace) -> None:
    import torch

    from training.data.nifti import atomic_write
    from training.model.checkpoint import load_checkpoint

    files = sorted(a.parts.glob("best.part*"), key=lambda p: int(p.name.removeprefix("best.part")))
    raw = torch.load(io.BytesIO(b"".join(f.read_bytes() for f in files)), map_location="cpu", weights_only=True)
    raw["state_dict"] = _cast(raw["state_dict"], torch.float32)
    atomic_write(a.out, lambda tmp: torch.save(raw, tmp))
    ck = load_checkpoint(a.out)
    print(f"{a.out}: preset {ck.network.preset}, epoch {ck.epoch}, metrics {ck.metrics.get('val_tissue_dice')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, default=Path("/tmp/gpu_train"))
    t.add_argument("--data", type=Path, default=Path("/tmp/gpu_data"))
    t.add_argument("--parts", type=Path, required=True, help="folder for best.part* and result.json")
    t.add_argument("--minutes", type=float, default=5.0, help="training time after calibration")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--subjects", type=int, default=12)
    t.add_argument("--workers", type=int, default=12)
    t.add_argument("--batch", type=int, default=2)
    t.add_argument("--optimizer", default="adamw")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--calib-iterations", type=int, default=30)
    t.add_argument("--iterations-per-epoch", type=int, help="skip the calibration")
    t.add_argument("--device", default="cuda", help="cuda; cpu only to try the script out")
    t.add_argument("--spacing", type=float, default=0.5, help="voxel size (mm); 2 only to try the script out")
    j = sub.add_parser("join")
    j.add_argument("--parts", type=Path, required=True)
    j.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    train_cmd(a) if a.cmd == "train" else join_cmd(a)


if __name__ == "__main__":
    main()
