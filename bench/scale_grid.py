"""Benchmark: wall time of a 4-model tiny simulation grid with ``--executor local --jobs 1`` vs ``--jobs 2``.

Not a test. Generates (once) a small synthetic study set, then runs the same grid (full volumes +
33 % along sagittal, coronal, axial; one seed → 4 models) through ``neolabel simulate`` in fresh
output folders, one mode after another, and records each run's wall time, the machine's load and
the per-model tissue Dice. ``--jobs N`` gives each job cores/N torch threads, so both modes use all
cores; the question is whether N small models side by side beat one model on all cores. A mode
``JxT`` runs ``--jobs J --threads T`` (e.g. ``1x1``: one job, one thread), to tell the gain from
running models side by side apart from the cost of multi-threading a tiny network.

    .venv/bin/python bench/scale_grid.py --out bench/out/scale_grid --modes 1 2 1x1

Writes ``bench/results/scale/grid_jobs.json`` (raw numbers) and one log per run beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale"
GRID = ["--epochs", "2", "--iterations", "15", "--seeds", "1", "--axis", "sagittal,coronal,axial",
        "--test-scans", "3", "--full-volumes", "1", "--preset", "tiny", "--quiet"]


def _tissue(results_csv: Path) -> dict[str, float]:
    with open(results_csv) as fh:
        return {r["condition"]: float(r["dice"]) for r in csv.DictReader(fh) if r["class"] == "tissue"}


def run_mode(data: Path, out: Path, mode: str) -> dict:
    jobs, _, threads = mode.partition("x")
    cmd = [sys.executable, "-m", "apps.cli", "simulate", str(data), "--out", str(out), *GRID,
           "--executor", "local", "--jobs", jobs, *(["--threads", threads] if threads else [])]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log = RESULTS / f"grid_jobs{mode}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode} failed (exit {proc.returncode}); see {log}")
    return {"mode": mode, "jobs": int(jobs), "threads_per_job": int(threads) if threads else (os.cpu_count() or 1)
            // int(jobs), "wall_s": round(wall, 1), "load_before": round(load0, 2),
            "load_after": round(os.getloadavg()[0], 2), "tissue_dice": _tissue(out / "results.csv"),
            "command": " ".join(cmd[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "scale_grid")
    ap.add_argument("--modes", nargs="+", default=["1", "2", "1x1"], help="JOBS or JOBSxTHREADS per run")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from training.data.synthetic.write import write_study_set

    data = args.out / "data"
    if not (data / "participants.tsv").is_file():
        write_study_set(data, subjects=10, shape=(36, 48, 48), spacing=3.0, seed=0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = []
    for mode in args.modes:
        out = args.out / f"jobs{mode}"
        if out.exists():
            shutil.rmtree(out)
        runs.append(run_mode(data, out, mode))
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]["wall_s"]
    summary = {"cpu_count": os.cpu_count(), "models": 4, "grid": GRID, "runs": runs,
               f"wall_ratio_to_mode_{runs[0]['mode']}": {r["mode"]: round(base / r["wall_s"], 3) for r in runs}}
    (RESULTS / "grid_jobs.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary[f"wall_ratio_to_mode_{runs[0]['mode']}"]))


if __name__ == "__main__":
    main()
