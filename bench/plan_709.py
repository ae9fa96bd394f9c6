"""Time budget planning over 709 dHCP-sized scans (217×290×290, 0.5 mm) from metadata only.

The entries are synthetic (no voxel data): brain extents and scan ages drawn like the dHCP
release-3 cohort (26.7–45.1 weeks). Target: one plan in well under a second.

    .venv/bin/python bench/plan_709.py
"""

from __future__ import annotations

import time

import numpy as np

from strategies.plan.budget import BudgetConfig, plan_budget
from strategies.plan.extents import PlanEntry

SHAPE = (217, 290, 290)


def synthetic_entries(n: int = 709, seed: int = 0) -> list[PlanEntry]:
    rng = np.random.default_rng(seed)
    ages = np.clip(rng.normal(39.5, 3.5, n), 26.7, 45.1)
    entries = []
    for i in range(n):
        aff = np.diag([0.5, 0.5, 0.5, 1.0])
        if i % 3 == 1:  # some scans stored LPS
            aff = np.diag([-0.5, -0.5, 0.5, 1.0])
        aff[:3, 3] = -np.asarray(SHAPE) * 0.25
        scale = 0.75 + 0.25 * (ages[i] - 26.7) / (45.1 - 26.7)
        slices = []
        for n_vox in SHAPE:
            half = int(n_vox * 0.36 * scale)
            centre = n_vox // 2 + int(rng.integers(-8, 9))
            slices.append(tuple(range(max(0, centre - half), min(n_vox, centre + half))))
        entries.append(PlanEntry(f"sub-{i:04d}_ses-{1000 + i}", SHAPE, aff, tuple(slices), float(ages[i])))
    return entries


def main() -> None:
    t0 = time.perf_counter()
    entries = synthetic_entries()
    t_build = time.perf_counter() - t0
    print(f"built {len(entries)} entries of shape {SHAPE} in {t_build:.3f} s (metadata only)")
    configs = [
        BudgetConfig(total_slices=30 * 180, dispersion=1.0, axis="axial", margin=0.1),  # paper baseline-like
        BudgetConfig(total_slices=30 * 180, dispersion=0.33, axis="axial", margin=0.1),
        BudgetConfig(total_slices=30 * 180, dispersion=0.33, axis="random", margin=0.1, selection="random"),
        BudgetConfig(total_slices=30 * 180, dispersion=0.33, axis="mixed", margin=0.1),
        BudgetConfig(total_slices=709, slices_per_volume=1, axis="sagittal", margin=0.1),
        BudgetConfig(total_slices=10**6, dispersion=0.33, axis="coronal", margin=0.1),  # all scans, shortfall
    ]
    worst = 0.0
    for cfg in configs:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            plan = plan_budget(entries, cfg)
            times.append(time.perf_counter() - t)
        best = min(times)
        worst = max(worst, max(times))
        s = plan.summary()
        per = f"spv {cfg.slices_per_volume}" if cfg.slices_per_volume else f"d {cfg.dispersion}"
        print(
            f"{cfg.axis:>8} {per:>8} {cfg.selection:>11}: {s['scans']:4d} scans, {s['spent']:6d} slices, "
            f"shortfall {s['shortfall']['slices'] if s['shortfall'] else 0:6d}; "
            f"plan {best:.3f} s (max of 3 runs {max(times):.3f} s)"
        )
    print(f"slowest single plan: {worst:.3f} s ({'OK' if worst < 1.0 else 'TOO SLOW'}: target < 1 s)")


if __name__ == "__main__":
    main()
