"""Benchmark: is the thick-slice (low-resolution) axis the weakest to annotate along?

Richter & Fetit 2022 found the sagittal axis weakest on dHCP, whose multi-slice stacks make one axis
blurrier than the others. The default synthetic set is isotropic, so this generates the same 2 mm study
set acquired as thick slices along one axis (``--thick-axis``, default sagittal: 2× slice thickness, then
resampled to the isotropic grid), and trains, per seed, one model per annotation axis with the same number
of slices (33 % of each scan's slices, as many scans as the full-volume baseline's slices pay for; the
baseline is trained too), ``cpu`` preset, same iterations for every model. Paired by seed: the thick axis
against each other axis (mean difference, 95 % bootstrap CI, Wilcoxon p). Writes the simulation's tables
to ``bench/results/thick_axis/`` plus ``summary.json`` and prints last::

    thick=<axis> weakest=<axis> <axis>=<dice> ... thick_vs_<axis>=<d> ci=[lo,hi] ...

    .venv/bin/python -m bench.thick_axis            # ≈ 65 min on 2 idle CPU cores (12 models × ≈ 5.5 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from apps.simulation.config import SimulationConfig  # noqa: E402
from apps.simulation.run import run_simulation  # noqa: E402
from apps.simulation.stats import mean_ci, paired_difference  # noqa: E402

AXES = ("sagittal", "coronal", "axial")
KEEP = ("results.csv", "results.md", "simulation.json", "*.png")


def _data(work: Path, subjects: int, thick_axis: str) -> Path:
    from training.data.synthetic.write import write_study_set

    data = work / "data"
    if not (data / "participants.tsv").is_file():
        write_study_set(data, subjects, shape=(54, 72, 72), spacing=2.0, seed=0, acquisition_axis=thick_axis)
    return data


def axis_dice(results: list[dict]) -> dict[str, dict[int, float]]:
    """Tissue Dice per annotation axis and seed (equidistant 33 % conditions only)."""
    out: dict[str, dict[int, float]] = {}
    for r in results:
        c = r["condition"]
        if r["mode"] == "static" and not c.get("full") and c.get("axis") in AXES:
            out.setdefault(c["axis"], {})[int(r["seed"])] = float(r["scores"]["tissue_dice"])
    return out


def summarise(results: list[dict], thick: str) -> dict:
    """Mean Dice per axis with CI, and the thick axis paired against each other axis."""
    by_axis = axis_dice(results)
    means = {a: mean_ci(list(v.values())) for a, v in by_axis.items()}
    out: dict = {"thick": thick, "axes": {a: [e.mean, e.lo, e.hi] for a, e in means.items()}, "vs": {}}
    out["weakest"] = min(means, key=lambda a: means[a].mean) if means else None
    for other in (a for a in by_axis if a != thick and thick in by_axis):
        seeds = sorted(set(by_axis[thick]) & set(by_axis[other]))
        p = paired_difference([by_axis[thick][s] for s in seeds], [by_axis[other][s] for s in seeds])
        out["vs"][other] = {"diff": p.diff.mean, "ci": [p.diff.lo, p.diff.hi], "p": p.p_value,
                            "wins": p.wins, "n": p.n, "verdict": p.verdict}
    return out


def last_line(s: dict) -> str:
    parts = [f"thick={s['thick']}", f"weakest={s['weakest']}"]
    parts += [f"{a}={v[0]:.3f}" for a, v in s["axes"].items()]
    for other, v in s["vs"].items():
        parts += [f"thick_vs_{other}={v['diff']:+.3f}", f"ci=[{v['ci'][0]:.3f},{v['ci'][1]:.3f}]", f"p={v['p']:.3g}"]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thick-axis", default="sagittal", choices=AXES)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--subjects", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=50, help="per epoch (the same for every model)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "thick_axis")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "thick_axis")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    args = ap.parse_args(argv)
    work = args.work / args.thick_axis
    cfg = SimulationConfig(out=work / "sim", data=_data(work, args.subjects, args.thick_axis), epochs=args.epochs,
                           iterations=args.iterations, seeds=args.seeds, test_scans=4, preset=args.preset,
                           dispersions=("0.33",), axes=AXES, selections=("equidistant",),
                           train_overrides={"threads": args.threads} if args.threads else {})
    run = run_simulation(cfg)
    results = args.results / args.thick_axis
    results.mkdir(parents=True, exist_ok=True)
    for pattern in KEEP:
        for f in cfg.out.glob(pattern):
            shutil.copy2(f, results / f.name)
    s = summarise(run.results, args.thick_axis)
    s["wall_seconds"] = round(run.wall_seconds, 1)
    (results / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
    print(last_line(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
