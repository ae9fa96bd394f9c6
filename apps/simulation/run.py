"""Simulation mode: replay budget strategies with the dense (dHCP) labels as the annotation oracle.

``run_simulation`` hides labels according to each condition, trains one model per condition and
seed with the same epochs, iterations and total number of annotated slices, and scores every
model on held-out, fully labelled scans (Dice per class, tissue mean, HD95). With ``rounds > 0``
it runs the active-learning loop instead (see :mod:`apps.simulation.loop`). Without ``data`` it
first generates a synthetic dHCP-layout study set inside ``out`` so it runs anywhere.

Everything is resumable: each model's result JSON is written atomically when it is done and is
reused on restart when its settings (condition, plan, seed, training settings, test scans) match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from apps.simulation.backend import (
    EvaluateFn,
    ProbabilitiesFn,
    RealProbabilities,
    TrainFn,
    real_evaluate,
    real_train,
)
from apps.simulation.config import SimulationConfig, SimulationSummary
from apps.simulation.data import (
    Oracle,
    SimulationError,
    check_dense,
    prepare_synthetic,
    split_subjects,
)
from apps.simulation.store import settings_key, write_json


def _dataset_root(cfg: SimulationConfig, log: Callable[[str], None]) -> tuple[Path, bool]:
    if cfg.data is not None:
        return Path(cfg.data), False
    root = Path(cfg.out) / "data"
    if not (root / "neolabel-synthetic.json").is_file():
        log(f"generating a synthetic study set of {cfg.synth_subjects} scans in {root}")
    prepare_synthetic(root, cfg.synth_subjects, cfg.synth_shape, cfg.synth_spacing, cfg.synth_seed)
    return root, True


def _run_name(r: dict) -> str:
    return r["condition"]["name"] if r["mode"] == "static" else f"{r['strategy']}@round{r['round']}"


def write_reports(out: Path, results: Sequence[dict], meta: dict, *, with_figures: bool) -> list[Path]:
    from apps.simulation import report

    files = [report.write_csv(out / "results.csv", results), report.write_markdown(out / "results.md", results, meta)]
    if with_figures and results:
        files += report.figures(out, results)
    return files


def run_simulation(
    cfg: SimulationConfig,
    *,
    train_fn: TrainFn | None = None,
    evaluate_fn: EvaluateFn | None = None,
    probabilities_fn: ProbabilitiesFn | None = None,
    log: Callable[[str], None] | None = None,
) -> SimulationSummary:
    """Run (or resume) a simulation into ``cfg.out``; the three functions default to real training."""
    from strategies.plan.extents import ExtentCache, entries_from_dataset
    from training.data.dataset import open_dataset

    t_start = time.perf_counter()
    cfg.check()
    if log is None:
        from tqdm.auto import tqdm

        log = tqdm.write if cfg.progress else (lambda _msg: None)
    train_fn = train_fn or real_train
    evaluate_fn = evaluate_fn or real_evaluate
    conditions = cfg.conditions() if cfg.rounds == 0 else []  # bad condition options fail before anything is written
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    root, synthetic = _dataset_root(cfg, log)
    dataset = open_dataset(root)
    split = split_subjects(dataset.subjects, cfg.test_scans, cfg.split_seed)
    check_dense(split.test)
    cache = ExtentCache(out / "cache" / "plan_extents.json")
    entries, skipped_entries = entries_from_dataset(dataset, cache=cache, subjects=split.pool)
    for sid, why in skipped_entries:
        log(f"not planned: {sid} ({why})")
    if not entries:
        raise SimulationError("no training scan can be planned (no brain mask or label with brain voxels)")
    oracle = Oracle(split.pool)
    seeds = [cfg.seed_offset + i for i in range(cfg.seeds)]
    train_settings = cfg.train_settings()
    common = {
        "data": str(root.resolve()),
        "test_ids": split.test_ids,
        # CPU threads change speed, not what is simulated: not part of the resume key.
        "train_settings": {k: v for k, v in train_settings.items() if k != "threads"},
        "epochs": cfg.epochs,
    }

    meta: dict[str, Any] = {
        "data": f"{root} ({'synthetic, ' + str(cfg.synth_subjects) + ' scans' if synthetic else dataset.layout})",
        "held-out test scans (dense labels, never trained on)": len(split.test),
        "training pool": f"{len(entries)} scans",
        "epochs": cfg.epochs,
        "iterations per epoch": cfg.iterations if cfg.iterations is not None else "training default",
        "network preset": cfg.preset,
        "training settings": ", ".join(f"{k}={v}" for k, v in train_settings.items() if k != "tensorboard"),
        "seeds": ", ".join(map(str, seeds)),
    }
    budgets: dict[int, int] = {}

    if cfg.rounds == 0:
        from apps.simulation.static import plan_jobs, run_static, write_plan

        margin0 = conditions[0].margin if conditions else cfg.margins[0]
        jobs, budgets = plan_jobs(conditions, entries, seeds, full_volumes=cfg.full_volumes,
                                  count_axis=cfg.count_axis, count_margin=margin0)
        for job in jobs:
            write_plan(out, job, cfg.count_axis)
        meta["budget (annotated slices per model)"] = ", ".join(f"seed {s}: {t}" for s, t in budgets.items())
        meta["budget rule"] = (
            f"the baseline's {cfg.full_volumes} full volumes counted as their usable {cfg.count_axis} slices "
            f"(brain slices minus a {margin0:.0%} margin per end); it trains on their dense labels"
        )
        write_json(out / "simulation.json", {"config": cfg.to_json(), "test_ids": split.test_ids,
                                             "pool_ids": split.pool_ids, "budgets": budgets,
                                             "conditions": [c.to_json() for c in conditions]})

        def on_result(results: list[dict]) -> None:
            write_reports(out, results, meta, with_figures=False)

        results, skipped = run_static(jobs, out=out, split=split, oracle=oracle, epochs=cfg.epochs,
                                      train_settings=train_settings, common=common, train_fn=train_fn,
                                      evaluate_fn=evaluate_fn, progress=cfg.progress, on_result=on_result, log=log)
    else:
        from apps.simulation.loop import LoopSettings, run_loop
        from apps.simulation.plans import baseline_volumes, pool_order

        _, static_budget = baseline_volumes(pool_order(entries, seeds[0], cfg.count_axis, cfg.margins[0]),
                                            cfg.full_volumes, cfg.count_axis, cfg.margins[0])
        settings = LoopSettings(
            rounds=cfg.rounds,
            seed_slices=cfg.seed_slices or max(1, static_budget // 2),
            round_slices=cfg.round_slices or max(1, static_budget // 4),
            epochs=cfg.epochs,
            round_epochs=cfg.round_epochs or max(1, cfg.epochs // 2),
            dispersion=cfg.loop_dispersion,
            axis=cfg.loop_axis,
            margin=cfg.margins[0],
            strategies=tuple(cfg.strategies),
        ).check()
        if "uncertainty" in settings.strategies and probabilities_fn is None:
            probabilities_fn = RealProbabilities()
        meta["mode"] = (f"active-learning loop: seed set {settings.seed_slices} slices, +{settings.round_slices} "
                        f"per round, {settings.rounds} round(s), {settings.round_epochs} warm-start epoch(s) per "
                        f"round, {settings.dispersion:g} of a scan's {settings.axis} slices per visit")
        write_json(out / "simulation.json", {"config": cfg.to_json(), "test_ids": split.test_ids,
                                             "pool_ids": split.pool_ids, "loop": asdict(settings)})

        def on_result(results: list[dict]) -> None:
            write_reports(out, results, meta, with_figures=False)

        results, skipped = run_loop(settings, out=out, split=split, entries=entries, oracle=oracle, seeds=seeds,
                                    train_settings=train_settings, common=common, train_fn=train_fn,
                                    evaluate_fn=evaluate_fn, probabilities_fn=probabilities_fn,
                                    progress=cfg.progress, on_result=on_result, log=log)
        plans = {f"{r['strategy']}__seed{r['seed']}__round{r['round']}": r["state"] for r in results}
        write_json(out / "plans" / "loop_states.json", plans)

    wall = time.perf_counter() - t_start
    total_train = sum(float(r.get("train_seconds") or 0) for r in results)
    meta["wall time of this invocation"] = f"{wall:.0f} s ({len(skipped)} result(s) reused from an earlier run)"
    meta["total training time (all models, incl. reused)"] = f"{total_train:.0f} s"
    files = write_reports(out, results, meta, with_figures=True)
    write_json(out / "timing.json", {
        "wall_seconds": round(wall, 1),
        "reused": skipped,
        "train_seconds": {f"{_run_name(r)}__seed{r['seed']}": r["train_seconds"] for r in results},
    })
    return SimulationSummary(out=out, results=results, skipped=skipped, files=files, wall_seconds=wall,
                             budgets=budgets)


__all__ = ["SimulationConfig", "SimulationError", "SimulationSummary", "run_simulation", "settings_key"]
