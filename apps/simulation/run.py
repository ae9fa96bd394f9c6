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
from dataclasses import asdict, dataclass
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
from apps.simulation.executor import make_executor
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


@dataclass
class _Run:
    """What every mode of one invocation shares (the data, the split, the training settings, the report meta)."""

    cfg: SimulationConfig
    out: Path
    split: Any
    entries: list
    oracle: Oracle
    seeds: list[int]
    train_settings: dict
    common: dict
    meta: dict
    train_fn: TrainFn
    evaluate_fn: EvaluateFn
    log: Callable[[str], None]

    def on_result(self, results: list[dict]) -> None:
        write_reports(self.out, results, self.meta, with_figures=False)

    def class_counts(self, names: Sequence[str]) -> dict | None:
        """The oracle's per-class slice counts, when a selection in ``names`` seeds picks on them."""
        from apps.simulation.budgets import oracle_class_counts
        from strategies.plan.selection import CLASS_SELECTIONS

        return oracle_class_counts(self.oracle, self.entries) if set(names) & set(CLASS_SELECTIONS) else None


def _prepare(cfg: SimulationConfig, train_fn: TrainFn, evaluate_fn: EvaluateFn,
             log: Callable[[str], None]) -> _Run:
    """Data, split (dense test labels checked), plan entries of the pool, and the setup lines of results.md."""
    from strategies.plan.extents import ExtentCache, entries_from_dataset
    from training.data.dataset import open_dataset

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
    return _Run(cfg, out, split, list(entries), Oracle(split.pool), seeds, train_settings, common, meta,
                train_fn, evaluate_fn, log)


def _static(run: _Run, conditions: list) -> tuple[list[dict], list[str], dict]:
    """The paper's design: every condition spends the baseline's slice count."""
    from apps.simulation.static import plan_jobs, run_static, write_plan

    cfg = run.cfg
    margin0 = conditions[0].margin if conditions else cfg.margins[0]
    jobs, budgets = plan_jobs(conditions, run.entries, run.seeds, full_volumes=cfg.full_volumes,
                              count_axis=cfg.count_axis, count_margin=margin0,
                              scores=run.class_counts([c.selection for c in conditions]))
    for job in jobs:
        write_plan(run.out, job, cfg.count_axis)
    run.meta["budget (annotated slices per model)"] = ", ".join(f"seed {s}: {t}" for s, t in budgets.items())
    run.meta["budget rule"] = (
        f"the baseline's {cfg.full_volumes} full volumes counted as their usable {cfg.count_axis} slices "
        f"(brain slices minus a {margin0:.0%} margin per end); it trains on their dense labels"
    )
    write_json(run.out / "simulation.json", {"config": cfg.to_json(), "test_ids": run.split.test_ids,
                                             "pool_ids": run.split.pool_ids, "budgets": budgets,
                                             "conditions": [c.to_json() for c in conditions]})
    results, skipped = run_static(jobs, out=run.out, split=run.split, oracle=run.oracle, epochs=cfg.epochs,
                                  train_settings=run.train_settings, common=run.common, train_fn=run.train_fn,
                                  evaluate_fn=run.evaluate_fn, progress=cfg.progress, on_result=run.on_result,
                                  log=run.log, executor=make_executor(cfg.executor_settings(), run.out, run.log))
    return results, skipped, budgets


def _budget_curves(run: _Run, conditions: list) -> tuple[list[dict], list[str], dict]:
    """Budget curves: every condition at every budget; identical plans share one model."""
    from apps.simulation.budgets import dedupe_jobs, plan_budget_jobs, pool_capacity, shared_results
    from apps.simulation.static import run_static, write_plan

    cfg = run.cfg
    jobs, totals, not_run = plan_budget_jobs(conditions, run.entries, run.seeds, count_axis=cfg.count_axis,
                                             scores=run.class_counts([c.selection for c in conditions]))
    if not jobs:
        raise SimulationError("no budget condition can be planned: " + "; ".join(not_run[:3]))
    for job in jobs:
        write_plan(run.out, job, cfg.count_axis)
    for line in not_run:
        run.log(line)
    unique, shared = dedupe_jobs(jobs)
    margin0 = conditions[0].margin
    capacity = pool_capacity(run.entries, cfg.count_axis, margin0)
    run.meta["budget rule"] = (
        f"a budget of p % spends round(p/100 × {capacity}) slices: {capacity} = the pool's usable {cfg.count_axis} "
        f"slices (brain slices minus a {margin0:.0%} margin per end, all {len(run.entries)} pool scans); "
        "100 % = full annotation, the reference"
    )
    run.meta["slices per budget"] = ", ".join(f"{b} %: {n}" for b, n in totals[run.seeds[0]].items())
    run.meta["models"] = f"{len(unique)} trained, {len(shared)} share an identical plan's model"
    if not_run:
        run.meta["not run (the pool cannot pay for them)"] = len(not_run)
    write_json(run.out / "simulation.json", {"config": cfg.to_json(), "test_ids": run.split.test_ids,
                                             "pool_ids": run.split.pool_ids, "budgets": totals,
                                             "not_run": not_run, "conditions": [c.to_json() for c in conditions]})

    def on_result(results: list[dict]) -> None:
        run.on_result(results + shared_results(results, shared))

    results, skipped = run_static(unique, out=run.out, split=run.split, oracle=run.oracle, epochs=cfg.epochs,
                                  train_settings=run.train_settings, common=run.common, train_fn=run.train_fn,
                                  evaluate_fn=run.evaluate_fn, progress=cfg.progress, on_result=on_result,
                                  log=run.log, executor=make_executor(cfg.executor_settings(), run.out, run.log))
    return results + shared_results(results, shared), skipped, totals


def _loop(run: _Run, probabilities_fn: ProbabilitiesFn | None) -> tuple[list[dict], list[str]]:
    """The active-learning loop: a learning curve per strategy."""
    from apps.simulation.budgets import budget_slices, pool_capacity
    from apps.simulation.conditions import parse_budget
    from apps.simulation.loop import LoopSettings, run_loop
    from apps.simulation.plans import baseline_volumes, pool_order
    from strategies.plan.selection import SCORED_SELECTIONS

    cfg, margin = run.cfg, run.cfg.margins[0]
    _, static_budget = baseline_volumes(pool_order(run.entries, run.seeds[0], cfg.count_axis, margin),
                                        cfg.full_volumes, cfg.count_axis, margin)
    capacity = pool_capacity(run.entries, cfg.count_axis, margin)
    targets = tuple(budget_slices(b, capacity) for b in sorted(parse_budget(b) for b in cfg.budgets))
    settings = LoopSettings(
        rounds=cfg.rounds,
        seed_slices=targets[0] if targets else cfg.seed_slices or max(1, static_budget // 2),
        round_slices=cfg.round_slices or max(1, static_budget // 4),
        epochs=cfg.epochs,
        round_epochs=cfg.round_epochs or max(1, cfg.epochs // 2),
        dispersion=cfg.loop_dispersion,
        axis=cfg.loop_axis,
        margin=margin,
        strategies=tuple(cfg.strategies),
        targets=targets,
    ).check()
    if set(settings.strategies) & set(SCORED_SELECTIONS) and probabilities_fn is None:
        probabilities_fn = RealProbabilities()
    growth = (f"rounds grow to {', '.join(map(str, targets[1:]))} slices" if targets
              else f"+{settings.round_slices} per round")
    run.meta["mode"] = (f"active-learning loop: seed set {settings.seed_slices} slices, {growth}, "
                        f"{settings.rounds} round(s), {settings.round_epochs} warm-start epoch(s) per "
                        f"round, {settings.dispersion:g} of a scan's {settings.axis} slices per visit")
    write_json(run.out / "simulation.json", {"config": cfg.to_json(), "test_ids": run.split.test_ids,
                                             "pool_ids": run.split.pool_ids, "loop": asdict(settings)})
    results, skipped = run_loop(settings, out=run.out, split=run.split, entries=run.entries, oracle=run.oracle,
                                seeds=run.seeds, train_settings=run.train_settings, common=run.common,
                                train_fn=run.train_fn, evaluate_fn=run.evaluate_fn,
                                probabilities_fn=probabilities_fn, progress=cfg.progress,
                                on_result=run.on_result, log=run.log,
                                class_counts=run.class_counts(settings.strategies),
                                executor=make_executor(cfg.executor_settings(), run.out, run.log))
    plans = {f"{r['strategy']}__seed{r['seed']}__round{r['round']}": r["state"] for r in results}
    write_json(run.out / "plans" / "loop_states.json", plans)
    return results, skipped


def run_simulation(
    cfg: SimulationConfig,
    *,
    train_fn: TrainFn | None = None,
    evaluate_fn: EvaluateFn | None = None,
    probabilities_fn: ProbabilitiesFn | None = None,
    log: Callable[[str], None] | None = None,
) -> SimulationSummary:
    """Run (or resume) a simulation into ``cfg.out``; the three functions default to real training."""
    t_start = time.perf_counter()
    cfg.check()
    if log is None:
        from tqdm.auto import tqdm

        log = tqdm.write if cfg.progress else (lambda _msg: None)
    conditions = cfg.conditions() if cfg.rounds == 0 else []  # bad condition options fail before anything is written
    run = _prepare(cfg, train_fn or real_train, evaluate_fn or real_evaluate, log)
    budgets: dict = {}
    if cfg.rounds:
        results, skipped = _loop(run, probabilities_fn)
    elif cfg.budgets:
        results, skipped, budgets = _budget_curves(run, conditions)
    else:
        results, skipped, budgets = _static(run, conditions)
    wall = time.perf_counter() - t_start
    total_train = sum(float(r.get("train_seconds") or 0) for r in results if not r.get("shared_with"))
    run.meta["wall time of this invocation"] = f"{wall:.0f} s ({len(skipped)} result(s) reused from an earlier run)"
    run.meta["total training time (all models, incl. reused)"] = f"{total_train:.0f} s"
    files = write_reports(run.out, results, run.meta, with_figures=True)
    write_json(run.out / "timing.json", {
        "wall_seconds": round(wall, 1),
        "reused": skipped,
        "train_seconds": {f"{_run_name(r)}__seed{r['seed']}": r["train_seconds"] for r in results},
    })
    return SimulationSummary(out=run.out, results=results, skipped=skipped, files=files, wall_seconds=wall,
                             budgets=budgets)


__all__ = ["SimulationConfig", "SimulationError", "SimulationSummary", "run_simulation", "settings_key"]
