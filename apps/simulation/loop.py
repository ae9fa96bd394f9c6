"""Active-learning loop mode: rounds of (strategy asks → oracle annotates → warm-start retrain → score).

Round 0 is the same for every strategy of a seed: ``seed_slices`` slices planned with the
equidistant budget planner, a model trained from scratch for ``epochs``. Each later round asks
the strategy (through :func:`strategies.plan.incremental.next_assignment`, exactly as the server does
for an annotator) for assignments until ``round_slices`` more slices are annotated; the oracle
fills them from the dense labels; the model is fine-tuned from the previous round's checkpoint on
everything annotated so far for ``round_epochs``; the held-out Dice is recorded. Strategies (the
planner's selections, :data:`strategies.plan.selection.SELECTIONS`):

* ``claspe``: class-stratified, power-noised predictive entropy of the current model, its noise
  decaying with the round (the model's probabilities on the pool scans are recomputed every round);
* ``uncertainty``: scans and slices by plain predictive entropy of the current model;
* ``fgrandom``: foreground-aware random (nnActive's baseline): a third of the picks seeded on a
  class of the oracle's dense label, the rest uniform over the brain slices inside the margins;
* ``random``: uniform over the brain slices inside the margins;
* ``equidistant``: the budget planner's evenly spaced slices, scans in its age-stratified order.

With ``targets`` (budget curves) the seed set is ``targets[0]`` slices and round ``k`` grows to
``targets[k]``; otherwise each round adds ``round_slices``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from apps.simulation.backend import EvaluateFn, ProbabilitiesFn, TrainFn, TrainJob, check_scores
from apps.simulation.data import Oracle, SimulationError, Split
from apps.simulation.executor import ModelExecutor, run_one
from apps.simulation.store import prepare_model_dir, read_result, settings_key, write_json
from strategies.plan.selection import CLASS_SELECTIONS, SCORED_SELECTIONS, SELECTIONS

LOOP_STRATEGIES: tuple[str, ...] = SELECTIONS
_CLOCK0 = datetime(2026, 1, 1, tzinfo=timezone.utc)  # simulated time: deterministic leases


@dataclass
class LoopSettings:
    rounds: int
    seed_slices: int
    round_slices: int
    epochs: int
    round_epochs: int
    dispersion: float = 0.33
    axis: str = "axial"
    margin: float = 0.1
    strategies: tuple[str, ...] = LOOP_STRATEGIES
    targets: tuple[int, ...] = ()  # annotated slices after the seed set and each round (budget curves)

    def target(self, round_no: int) -> int:
        """Slices annotated once round ``round_no`` is done (round 0 = the seed set)."""
        if self.targets:
            return int(self.targets[round_no])
        return self.seed_slices + round_no * self.round_slices

    def check(self) -> LoopSettings:
        if self.rounds < 1:
            raise SimulationError("--rounds must be ≥ 1 in loop mode")
        if self.targets and (len(self.targets) != self.rounds + 1
                             or any(b <= a for a, b in zip(self.targets, self.targets[1:], strict=False))):
            raise SimulationError(f"loop budgets must give {self.rounds + 1} growing slice counts, got {self.targets} "
                                  "(use budgets further apart, or fewer)")
        if self.seed_slices < 1 or self.round_slices < 1:
            raise SimulationError("the seed set and the per-round budget need at least one slice each")
        unknown = [s for s in self.strategies if s not in LOOP_STRATEGIES]
        if unknown:
            raise SimulationError(f"unknown loop strategy {unknown}; choose from {', '.join(LOOP_STRATEGIES)}")
        return self


def _config(settings: LoopSettings, selection: str, total: int, seed: int):
    from strategies.plan.budget import BudgetConfig

    return BudgetConfig(total_slices=int(total), dispersion=float(settings.dispersion), axis=settings.axis,
                        margin=float(settings.margin), selection=selection, seed=int(seed))


def annotate_until(state: Any, entries: Sequence[Any], target: int, *, round_no: int,
                   scores: dict | None = None) -> tuple[Any, list]:
    """Ask for assignments and submit the oracle's annotation until ``target`` slices are annotated."""
    from strategies.plan.incremental import next_assignment, record_submission

    state = replace(state, config=replace(state.config, total_slices=int(target)))
    got: list = []
    step = 0
    while state.spent < target:
        now = _CLOCK0 + timedelta(days=round_no, minutes=step)
        nxt = next_assignment(state, entries, "simulated-annotator", now, scores=scores)
        if not nxt.assignments:
            break
        asg = [replace(a, round=round_no) for a in nxt.assignments]
        state = record_submission(nxt.state, asg, client_id="simulated-annotator")
        got.extend(asg)
        step += 1
    return state, got


def state_assignments(state: Any, strategy: str, entries: dict[str, Any]) -> dict[str, list]:
    """Every annotated slice of the state as assignments per image (what the oracle must fill)."""
    from strategies.plan.assignment import SliceAssignment

    out: dict[str, list] = {}
    for image, per_axis in state.annotated.items():
        for axis, idx in per_axis.items():
            if idx:
                voxel_axis = entries[image].frames[axis].voxel_axis
                out.setdefault(image, []).append(SliceAssignment(image, axis, voxel_axis, list(idx), strategy=strategy))
    return out


def _scores_for(checkpoint: Path, entries: Sequence[Any], pool: dict[str, Any], probabilities_fn: ProbabilitiesFn,
                oracle: Oracle, model_round: int = 0) -> dict:
    """Per-slice uncertainty scores of the current model on every pool scan (brain-masked); ``model_round``
    = the generation of the model (claspe's noise schedule)."""
    import numpy as np

    from strategies.plan.uncertainty import slice_scores
    from training.data.labels import BRAIN
    from training.data.nifti import load_volume

    out = {}
    for e in entries:
        subject = pool[e.id]
        probs = probabilities_fn(checkpoint, subject)
        if subject.brain_mask is not None:
            mask = load_volume(subject.brain_mask).data != 0
        else:  # brain region from the image header grid is unknown without a mask; fall back to predicted brain
            mask = np.isin(np.argmax(probs, axis=0), np.asarray(BRAIN))
        out[e.id] = slice_scores(probs, e.affine, mask, model_round=model_round)
    return out


def run_loop(
    settings: LoopSettings,
    *,
    out: Path,
    split: Split,
    entries: Sequence[Any],
    oracle: Oracle,
    seeds: Sequence[int],
    train_settings: dict,
    common: dict,
    train_fn: TrainFn,
    evaluate_fn: EvaluateFn,
    probabilities_fn: ProbabilitiesFn | None,
    progress: bool = True,
    on_result: Callable[[list[dict]], None] | None = None,
    log: Callable[[str], None] = print,
    class_counts: dict | None = None,
    executor: ModelExecutor | None = None,
) -> tuple[list[dict], list[str]]:
    """All strategies × seeds × rounds; each round's result JSON is written atomically (resume).

    ``class_counts``: the oracle's per-class slice counts per pool scan (``fgrandom`` seeds on them)."""
    from tqdm.auto import tqdm

    from strategies.plan.incremental import AssignmentState, new_state

    settings.check()
    if executor is not None:  # each round is one job (waited for): a fresh oracle keeps its cache out of the pickle
        oracle = Oracle(split.pool)
    by_id = {e.id: e for e in entries}
    pool = {s.id: s for s in split.pool}
    results: list[dict] = []
    skipped: list[str] = []
    total_models = len(seeds) * (1 + settings.rounds * len(settings.strategies))
    bar = tqdm(total=total_models, desc="loop", unit="model", disable=not progress, position=0)

    def train_and_score(name: str, seed: int, run_dir: Path, state: Any, strategy: str, round_no: int,
                        init: Path | None, epochs: int, key: str) -> dict:
        per_image = state_assignments(state, strategy, by_id)
        labels = {i: oracle.submit(i, asg) for i, asg in per_image.items()}
        subjects = [pool[i] for i in sorted(per_image)]
        job_settings = dict(train_settings)
        if prepare_model_dir(run_dir / "model", key):
            job_settings["resume"] = True
        job = TrainJob(name=name, seed=seed, subjects=subjects, partial_labels=labels, out_dir=run_dir / "model",
                       epochs=epochs, init=init, settings=job_settings, progress=progress)
        outcome = train_fn(job)
        t1 = time.perf_counter()
        scores = check_scores(evaluate_fn(outcome.checkpoint, list(split.test)))
        res = {
            "status": "done",
            "key": key,
            "mode": "loop",
            "strategy": strategy,
            "seed": seed,
            "round": round_no,
            "dispersion": settings.dispersion,
            "axis": settings.axis,
            "selection": strategy,
            "margin": settings.margin,
            "n_slices": int(state.spent),
            "n_volumes": len(per_image),
            "train_ids": sorted(per_image),
            "test_ids": split.test_ids,
            "epochs": epochs,
            "init": None if init is None else str(init),
            "train_seconds": round(float(outcome.seconds), 3),
            "eval_seconds": round(time.perf_counter() - t1, 3),
            "checkpoint": str(outcome.checkpoint),
            "train_info": outcome.info,
            "state": state.to_json(),
            "scores": scores.to_json(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(run_dir / "result.json", res)
        return res

    try:
        for seed in seeds:
            # Round 0: shared seed set and model.
            st0 = new_state(_config(settings, "equidistant", settings.seed_slices, seed))
            st0, _ = annotate_until(st0, entries, settings.seed_slices, round_no=0)
            if st0.spent < settings.seed_slices:
                raise SimulationError(f"the pool holds only {st0.spent} usable slices for a seed set of "
                                      f"{settings.seed_slices}")
            key0 = settings_key({"loop": "seed", "seed": seed, "state": st0.to_json(), "epochs": settings.epochs,
                                 **common})
            dir0 = out / "loop" / "_seed-set" / f"seed{seed}" / "round0"
            r0 = read_result(dir0 / "result.json", key0)
            if r0 is None:
                bar.set_postfix_str(f"seed set, seed {seed}")
                r0 = run_one(executor, f"seed set seed {seed}", dir0 / "result.json", partial(
                    train_and_score, "seed-set", seed, dir0, st0, "seed-set", 0, None, settings.epochs, key0))
            else:
                skipped.append(f"seed set seed {seed}")
            bar.update(1)
            for strategy in settings.strategies:
                results.append({**r0, "strategy": strategy, "selection": strategy})
            if on_result is not None:
                on_result(results)
            for strategy in settings.strategies:
                state = AssignmentState.from_json(r0["state"])
                state = replace(state, config=_config(settings, strategy, state.spent, seed))
                prev_ckpt = Path(r0["checkpoint"])
                prev_key = key0
                for k in range(1, settings.rounds + 1):
                    target = settings.target(k)
                    run_dir = out / "loop" / strategy / f"seed{seed}" / f"round{k}"
                    # The key chains the previous round's key: a changed earlier round invalidates later ones.
                    key = settings_key({"loop": strategy, "seed": seed, "round": k, "prev": prev_key,
                                        "round_slices": target - settings.target(k - 1),
                                        "round_epochs": settings.round_epochs, **common})
                    stored = read_result(run_dir / "result.json", key)
                    label = f"{strategy} seed {seed} round {k}"
                    if stored is not None:
                        res = stored
                        skipped.append(label)
                    else:
                        bar.set_postfix_str(label)
                        scores = class_counts if strategy in CLASS_SELECTIONS else None
                        if strategy in SCORED_SELECTIONS:
                            if probabilities_fn is None:
                                raise SimulationError(f"the {strategy} strategy needs a probabilities function")
                            scores = _scores_for(prev_ckpt, entries, pool, probabilities_fn, oracle, k - 1)
                        state, got = annotate_until(state, entries, target, round_no=k, scores=scores)
                        if not got:
                            log(f"{label}: no slices left to assign; stopping this strategy")
                            break
                        res = run_one(executor, label, run_dir / "result.json", partial(
                            train_and_score, strategy, seed, run_dir, state, strategy, k, prev_ckpt,
                            settings.round_epochs, key))
                        td = res["scores"]["tissue_dice"]
                        log(f"{label}: {res['n_slices']} slices, tissue Dice "
                            f"{td if td is None else round(td, 4)}, train {res['train_seconds']:.0f} s")
                    state = AssignmentState.from_json(res["state"])
                    state = replace(state, config=_config(settings, strategy, state.spent, seed))
                    prev_ckpt = Path(res["checkpoint"])
                    prev_key = key
                    results.append(res)
                    bar.update(1)
                    if on_result is not None:
                        on_result(results)
    finally:
        bar.close()
    return results, skipped
