"""Static mode: one model per condition × seed, same budget and epochs, scored on the held-out scans."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from apps.simulation.backend import EvaluateFn, Scores, TrainFn, TrainJob, check_scores
from apps.simulation.conditions import Condition, safe_name
from apps.simulation.data import Oracle, Split
from apps.simulation.executor import ModelExecutor, ModelTask
from apps.simulation.plans import (
    baseline_assignments,
    baseline_volumes,
    condition_assignments,
    count_slices,
    count_volumes,
    pool_order,
)
from apps.simulation.store import prepare_model_dir, read_result, settings_key, write_json


@dataclass
class StaticJob:
    condition: Condition
    seed: int
    total_slices: int
    assignments: list  # SliceAssignment
    dense_ids: list[str]  # baseline: volumes trained on their dense labels

    @property
    def n_slices(self) -> int:
        return count_slices(self.assignments)

    @property
    def n_volumes(self) -> int:
        return count_volumes(self.assignments)

    @property
    def train_ids(self) -> list[str]:
        return sorted({a.image for a in self.assignments})


def plan_jobs(
    conditions: Sequence[Condition],
    entries: Sequence[Any],
    seeds: Sequence[int],
    *,
    full_volumes: int,
    count_axis: str,
    count_margin: float,
    scores: dict[str, Any] | None = None,
) -> tuple[list[StaticJob], dict[int, int]]:
    """Plan every condition × seed before any training (the paper fixes the slices before training).

    ``scores``: the oracle's per-class slice counts per scan (``fgrandom`` seeds its picks on them)."""
    jobs: list[StaticJob] = []
    budgets: dict[int, int] = {}
    for seed in seeds:
        ordered = pool_order(entries, seed, count_axis, count_margin)
        base, total = baseline_volumes(ordered, full_volumes, count_axis, count_margin)
        budgets[seed] = total
        for cond in conditions:
            if cond.full:
                asg = baseline_assignments(base, count_axis, count_margin, seed)
                jobs.append(StaticJob(cond, seed, total, asg, [e.id for e in base]))
            else:
                asg = condition_assignments(cond, ordered, total, seed, scores)
                jobs.append(StaticJob(cond, seed, total, asg, []))
    return jobs, budgets


def write_plan(out: Path, job: StaticJob, count_axis: str) -> Path:
    path = out / "plans" / f"{safe_name(job.condition.name)}__seed{job.seed}.json"
    write_json(
        path,
        {
            "condition": job.condition.to_json(),
            "seed": job.seed,
            "total_slices": job.total_slices,
            "count_axis": count_axis,
            "n_volumes": job.n_volumes,
            "n_slices": job.n_slices,
            "dense_volumes": job.dense_ids,
            "assignments": [a.to_json() for a in job.assignments],
        },
    )
    return path


def job_key(job: StaticJob, common: dict) -> str:
    return settings_key(
        {
            "condition": job.condition.key(),
            "seed": job.seed,
            "assignments": [a.to_json() for a in job.assignments],
            "dense": job.dense_ids,
            **common,
        }
    )


def result_path(out: Path, job: StaticJob) -> Path:
    return out / "runs" / safe_name(job.condition.name) / f"seed{job.seed}" / "result.json"


def run_job(
    job: StaticJob,
    *,
    out: Path,
    split: Split,
    oracle: Oracle,
    epochs: int,
    train_settings: dict,
    key: str,
    train_fn: TrainFn,
    evaluate_fn: EvaluateFn,
    progress: bool,
) -> dict:
    """Train one model on the oracle's partial labels, score it on the test scans, store the result."""
    pool = {s.id: s for s in split.pool}
    test_ids = set(split.test_ids)
    by_image: dict[str, list] = {}
    for a in job.assignments:
        by_image.setdefault(a.image, []).append(a)
    leaked = sorted(set(by_image) & test_ids)
    if leaked:  # cannot happen through the planner (it never sees test scans); guard anyway
        raise RuntimeError(f"test scans {leaked} were assigned for training")
    labels: dict[str, Any] = {}
    for image_id, asg in by_image.items():
        if image_id in job.dense_ids:
            labels[image_id] = oracle.dense_label_path(image_id)
        else:
            labels[image_id] = oracle.submit(image_id, asg)
    subjects = [pool[i] for i in sorted(by_image)]
    run_dir = result_path(out, job).parent
    settings = dict(train_settings)
    if prepare_model_dir(run_dir / "model", key):
        settings["resume"] = True  # continue an interrupted model from its last epoch
    train_job = TrainJob(
        name=job.condition.name,
        seed=job.seed,
        subjects=subjects,
        partial_labels=labels,
        out_dir=run_dir / "model",
        epochs=epochs,
        init=None,
        settings=settings,
        progress=progress,
    )
    t0 = time.perf_counter()
    outcome = train_fn(train_job)
    train_seconds = outcome.seconds if outcome.seconds == outcome.seconds else time.perf_counter() - t0
    t1 = time.perf_counter()
    scores: Scores = check_scores(evaluate_fn(outcome.checkpoint, list(split.test)))
    eval_seconds = time.perf_counter() - t1
    result = {
        "status": "done",
        "key": key,
        "mode": "static",
        "condition": job.condition.to_json(),
        "seed": job.seed,
        "total_slices": job.total_slices,
        "n_slices": job.n_slices,
        "n_volumes": job.n_volumes,
        "train_ids": job.train_ids,
        "test_ids": split.test_ids,
        "epochs": epochs,
        "train_seconds": round(float(train_seconds), 3),
        "eval_seconds": round(float(eval_seconds), 3),
        "checkpoint": str(outcome.checkpoint),
        "train_info": outcome.info,
        "scores": scores.to_json(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(result_path(out, job), result)
    return result


def run_static(
    jobs: Sequence[StaticJob],
    *,
    out: Path,
    split: Split,
    oracle: Oracle,
    epochs: int,
    train_settings: dict,
    common: dict,
    train_fn: TrainFn,
    evaluate_fn: EvaluateFn,
    progress: bool = True,
    on_result: Callable[[list[dict]], None] | None = None,
    log: Callable[[str], None] = print,
    executor: ModelExecutor | None = None,
) -> tuple[list[dict], list[str]]:
    """Run (or load) every job; returns the results and the names of the jobs that were skipped on resume.

    With an ``executor`` the models still missing run as one job each (:mod:`apps.simulation.executor`);
    without, one after another in this process."""
    from tqdm.auto import tqdm

    results: list[dict] = []
    skipped: list[str] = []
    tasks: list[ModelTask] = []
    slots: list[int] = []  # where each task's result goes in ``results`` (job order, as in this process)
    bar = tqdm(total=len(jobs), desc="conditions", unit="model", disable=not progress, position=0)
    try:
        for job in jobs:
            key = job_key(job, common)
            path = result_path(out, job)
            label = f"{job.condition.name} seed {job.seed}"
            stored = read_result(path, key)
            if stored is not None:
                results.append(stored)
                skipped.append(label)
                bar.set_postfix_str(f"{label}: done earlier")
                bar.update(1)
                continue
            if executor is not None:  # a fresh oracle: the parent's cache of dense labels stays out of the job
                slots.append(len(results))
                results.append({})
                tasks.append(ModelTask(label, path, partial(
                    run_job, job, out=out, split=split, oracle=Oracle(split.pool), epochs=epochs,
                    train_settings=train_settings, key=key, train_fn=train_fn, evaluate_fn=evaluate_fn,
                    progress=False)))
                continue
            bar.set_postfix_str(f"{label}: {job.n_slices} slices / {job.n_volumes} scans")
            res = run_job(
                job,
                out=out,
                split=split,
                oracle=oracle,
                epochs=epochs,
                train_settings=train_settings,
                key=key,
                train_fn=train_fn,
                evaluate_fn=evaluate_fn,
                progress=progress,
            )
            results.append(res)
            td = res["scores"]["tissue_dice"]
            log(f"{label}: tissue Dice {td if td is None else round(td, 4)}, train {res['train_seconds']:.0f} s")
            bar.update(1)
            if on_result is not None:
                on_result(results)
        if tasks:
            assert executor is not None

            def done(i: int, res: dict) -> None:
                results[slots[i]] = res
                td = res["scores"]["tissue_dice"]
                log(f"{tasks[i].label}: tissue Dice {td if td is None else round(td, 4)}, "
                    f"train {res['train_seconds']:.0f} s")
                bar.update(1)
                if on_result is not None:
                    on_result([r for r in results if r])

            executor.run(tasks, done)
    finally:
        bar.close()
    return results, skipped
