"""Benchmark: transfer-learning freeze levels on a synthetic old → young split (Richter & Fetit 2022, §transfer).

What it does (all seeded, CPU by default):
1. writes a synthetic dHCP-like study set (``training.data.synthetic``; anatomy depends on scan age:
   brain size, cortical folding, CSF, ventricles);
2. splits it by age (``training.data.splits.age_split``): the oldest ``--source-n`` → source, the
   youngest ``--target-n`` → ``--target-train`` fine-tune + the rest test (default 10 / 4 + 8 of
   60, about the paper's proportions 100 / 40 + 80 of 709, so the target is preterm-aged);
3. trains a source model on the source group;
4. for every freeze level (none, shallow, medium, deep, full, scratch) trains on the young
   fine-tuning group with the same epochs and iterations, starting from the source model (except
   ``scratch``) and evaluates on the young test group (Dice per class, fast Predictor);
5. optionally (``--age``) trains an AgeU-Net on source + young fine-tuning subjects and reports the
   scan-age MAE/MSE on the young test group next to "always answer the training mean".

Prints one table (trainable parameters, seconds, s/iteration, tissue Dice, Dice per class) and
writes ``results.json`` into ``--out``. Short CPU runs are noisy: use ``--seeds 0 1 2`` to see
the spread. With a 4-level network (``tiny``/``cpu`` presets) ``deep`` equals ``full``.

Example (the reported run: 681 s on 2 cores shared with five other jobs; ``--threads 1`` is much
faster than 2 on a busy machine, where 2 threads oversubscribe)::

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/transfer.py --out /tmp/bench_transfer --source-epochs 10 \
        --ft-epochs 5 --iterations 15 --threads 1 --age > /tmp/bench_transfer.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# bench/ holds scripts named like our packages (bench/training.py): never import from the script folder
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

LEVELS = ("none", "shallow", "medium", "deep", "full", "scratch")


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--subjects", type=int, default=60, help="synthetic subjects generated")
    ap.add_argument("--source-n", type=int, default=10, help="oldest N train the source model (paper: 100 of 709)")
    ap.add_argument("--target-n", type=int, default=12, help="youngest N form the target (paper: 120 of 709)")
    ap.add_argument("--target-train", type=int, default=4, help="target subjects that fine-tune (paper: 40)")
    ap.add_argument("--shape", type=int, nargs=3, default=(40, 48, 48))
    ap.add_argument("--spacing", type=float, default=2.8)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "cpu", "paper"))
    ap.add_argument("--source-epochs", type=int, default=6)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=12, help="iterations per epoch (source and fine-tuning)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="override the preset's learning rate")
    ap.add_argument("--levels", nargs="*", default=list(LEVELS), choices=LEVELS, help="none given: AgeU-Net only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--age", action="store_true", help="also train and evaluate an AgeU-Net")
    ap.add_argument("--age-weights", type=float, nargs="+", default=[0.01], help="α values for --age (paper 0.01)")
    ap.add_argument("--data-seed", type=int, default=0)
    a = ap.parse_args(argv)

    import numpy as np
    import torch

    from training.data.dataset import open_dataset
    from training.data.labels import NUM_CLASSES, TISSUE, class_names
    from training.data.splits import age_split, write_split
    from training.data.synthetic.write import write_study_set
    from training.evaluate.segmentation import evaluate_checkpoint
    from training.fit.train import TrainConfig, train

    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "data"
    if not (data / "participants.tsv").exists():
        write_study_set(data, subjects=a.subjects, shape=tuple(a.shape), spacing=a.spacing, seed=a.data_seed)
    ds = open_dataset(data)
    split = age_split(ds.subjects, a.source_n, a.target_n, a.target_train, seed=a.data_seed)
    write_split(split, a.out / "split.json")
    src = ds.subset(split["source"])
    tr = ds.subset(split["target_train"])
    te = ds.subset(split["target_test"])
    ag = split["ages"]
    print(f"split: source {len(src)} ({ag['source']['min']}–{ag['source']['max']} w), young fine-tune {len(tr)} "
          f"({ag['target_train']['min']}–{ag['target_train']['max']} w), young test {len(te)} "
          f"({ag['target_test']['min']}–{ag['target_test']['max']} w)", flush=True)

    def cfg(epochs: int, seed: int, **kw) -> TrainConfig:
        return TrainConfig(preset=a.preset, epochs=epochs, iterations_per_epoch=a.iterations, batch_size=a.batch_size,
                           lr=a.lr, seed=seed, threads=a.threads, device="cpu", tensorboard=False, **kw)

    results: list[dict] = []
    for seed in a.seeds if a.levels else []:
        t0 = time.perf_counter()
        source = train(cfg(a.source_epochs, seed), src, a.out / f"seed{seed}" / "source", progress=False)
        src_s = time.perf_counter() - t0
        print(f"seed {seed}: source model trained in {src_s:.0f} s", flush=True)
        for level in a.levels:
            t0 = time.perf_counter()
            init = None if level == "scratch" else source.best_path
            res = train(cfg(a.ft_epochs, seed, freeze=level), tr, a.out / f"seed{seed}" / level, init=init,
                        progress=False)
            train_s = time.perf_counter() - t0
            tc = json.loads((res.out_dir / "train_config.json").read_text()) if level != "none" else {}
            fr = tc.get("freeze_report", {"trainable_params": 0, "frozen_params": None})
            rep = evaluate_checkpoint(res.best_path, te, device="cpu", hd95=False)
            dice = rep.mean_dice
            row = {"seed": seed, "level": level, "trainable_params": fr["trainable_params"],
                   "frozen_params": fr.get("frozen_params"), "train_s": train_s,
                   "s_per_iteration": float(np.mean([h["s_per_iteration"] for h in res.history])) if res.history
                   else None, "tissue_dice": rep.tissue_dice, "all_dice": rep.all_classes_dice,
                   "dice": {str(c): dice[c] for c in range(NUM_CLASSES)}}
            results.append(row)
            print(f"seed {seed} {level:<8} trainable {row['trainable_params']:>9,}  {train_s:6.0f} s  "
                  f"tissue Dice {rep.tissue_dice:.3f}", flush=True)
            (a.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                            "split": {k: split[k] for k in ("source", "target_train",
                                                                                           "target_test", "ages")},
                                                            "rows": results}, indent=1))

    age_rows = []
    if a.age:
        from training.evaluate.age import evaluate_age_checkpoint

        for seed, alpha in ((s, w) for s in a.seeds for w in a.age_weights):
            t0 = time.perf_counter()
            res = train(cfg(a.source_epochs, seed, age_head=True, age_weight=alpha), list(src) + list(tr),
                        a.out / f"seed{seed}" / f"ageunet-{alpha:g}", progress=False)
            age_s = time.perf_counter() - t0
            rep_age = evaluate_age_checkpoint(res.best_path, te)
            mean_age = float(np.mean([s.scan_age for s in list(src) + list(tr)]))
            seg = evaluate_checkpoint(res.best_path, te, device="cpu", hd95=False)
            age_rows.append({"seed": seed, "alpha": alpha, "mae_weeks": rep_age.mae, "mse_weeks2": rep_age.mse,
                             "baseline_mae_weeks": rep_age.baseline_mae(mean_age), "train_s": age_s,
                             "tissue_dice": seg.tissue_dice, "subjects": rep_age.subjects})
            print(f"AgeU-Net α={alpha:g} seed {seed} ({age_s:.0f} s):\n{rep_age.to_text()}", flush=True)

    names = class_names()
    short = {c: names[c][:6] for c in range(NUM_CLASSES)}
    print()
    print(f"Transfer benchmark: preset {a.preset}, {a.subjects} synthetic subjects {tuple(a.shape)} @ {a.spacing} mm, "
          f"source {a.source_epochs}×{a.iterations} it, fine-tune {a.ft_epochs}×{a.iterations} it, batch "
          f"{a.batch_size}, seeds {a.seeds}; Dice on the young test set ({len(te)} subjects)")
    head = f"{'level':<8}{'seed':>5}{'trainable':>11}{'train s':>9}{'s/it':>6}{'tissue':>8}{'all':>7}" + "".join(
        f"{short[c]:>8}" for c in range(1, NUM_CLASSES))
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['level']:<8}{r['seed']:>5}{r['trainable_params']:>11,}{r['train_s']:>9.0f}"
              f"{_fmt(r['s_per_iteration'], '.2f'):>6}{_fmt(r['tissue_dice']):>8}{_fmt(r['all_dice']):>7}"
              + "".join(f"{_fmt(r['dice'][str(c)]):>8}" for c in range(1, NUM_CLASSES)))
    if len(a.seeds) > 1:
        print("mean over seeds:")
        for level in a.levels:
            rs = [r for r in results if r["level"] == level]
            td = [r["tissue_dice"] for r in rs]
            print(f"{level:<8} tissue Dice {np.mean(td):.3f} ± {np.std(td):.3f}")
    if age_rows:
        print()
        print(f"{'AgeU-Net α':<12}{'seed':>5}{'MAE w':>8}{'MSE w²':>9}{'mean-baseline MAE w':>21}{'tissue':>8}")
        for r in age_rows:
            print(f"{r['alpha']:<12g}{r['seed']:>5}{r['mae_weeks']:>8.2f}{r['mse_weeks2']:>9.2f}"
                  f"{r['baseline_mae_weeks']:>21.2f}{r['tissue_dice']:>8.3f}")
    print(f"tissue classes: {', '.join(names[c] for c in TISSUE)}; total {time.perf_counter() - t_all:.0f} s")
    (a.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                    "split": {k: split[k] for k in ("source", "target_train",
                                                                                   "target_test", "ages")},
                                                    "rows": results, "age": age_rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
