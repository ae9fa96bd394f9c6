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
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class _Model:
    """One model of the loop: the annotation state it trains on and where its result goes."""

    name: str
    seed: int
    strategy: str
    round_no: int
    run_dir: Path
    key: str
    state: Any
    init: Path | None
    epochs: int


@dataclass(frozen=True)
class _ModelJob:
    """Oracle labels → train → evaluate → result JSON for one :class:`_Model`; picklable, so it can run as a job."""

    settings: LoopSettings
    split: Split
    by_id: dict[str, Any]
    pool: dict[str, Any]
    oracle: Oracle
    train_settings: dict
    train_fn: TrainFn
    evaluate_fn: EvaluateFn
    progress: bool

    def run(self, model: _Model) -> dict:
        per_image = state_assignments(model.state, model.strategy, self.by_id)
        labels = {i: self.oracle.submit(i, asg) for i, asg in per_image.items()}
        job_settings = dict(self.train_settings)
        if prepare_model_dir(model.run_dir / "model", model.key):
            job_settings["resume"] = True
        job = TrainJob(name=model.name, seed=model.seed, subjects=[self.pool[i] for i in sorted(per_image)],
                       partial_labels=labels, out_dir=model.run_dir / "model", epochs=model.epochs, init=model.init,
                       settings=job_settings, progress=self.progress)
        outcome = self.train_fn(job)
        t1 = time.perf_counter()
        scores = check_scores(self.evaluate_fn(outcome.checkpoint, list(self.split.test)))
        res = {
            "status": "done",
            "key": model.key,
            "mode": "loop",
            "strategy": model.strategy,
            "seed": model.seed,
            "round": model.round_no,
            "dispersion": self.settings.dispersion,
            "axis": self.settings.axis,
            "selection": model.strategy,
            "margin": self.settings.margin,
            "n_slices": int(model.state.spent),
            "n_volumes": len(per_image),
            "train_ids": sorted(per_image),
            "test_ids": self.split.test_ids,
            "epochs": model.epochs,
            "init": None if model.init is None else str(model.init),
            "train_seconds": round(float(outcome.seconds), 3),
            "eval_seconds": round(time.perf_counter() - t1, 3),
            "checkpoint": str(outcome.checkpoint),
            "train_info": outcome.info,
            "state": model.state.to_json(),
            "scores": scores.to_json(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json(model.run_dir / "result.json", res)
        return res


@dataclass
class _Loop:
    """The loop's bookkeeping across seeds and strategies: stored results are reused, new ones are trained."""

    settings: LoopSettings
    out: Path
    entries: Sequence[Any]
    common: dict
    job: _ModelJob
    probabilities_fn: ProbabilitiesFn | None
    class_counts: dict | None
    executor: ModelExecutor | None
    log: Callable[[str], None]
    on_result: Callable[[list[dict]], None] | None
    bar: Any
    results: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def run_seed(self, seed: int) -> None:
        """Round 0 (shared by every strategy of the seed), then each strategy's learning curve."""
        r0, key0 = self.seed_set(seed)
        self.bar.update(1)
        self.results.extend({**r0, "strategy": st, "selection": st} for st in self.settings.strategies)
        self._report()
        for strategy in self.settings.strategies:
            self.curve(strategy, seed, r0, key0)

    def seed_set(self, seed: int) -> tuple[dict, str]:
        """The equidistant seed set and its model from scratch; the result and its key."""
        from strategies.plan.incremental import new_state

        st = self.settings
        state = new_state(_config(st, "equidistant", st.seed_slices, seed))
        state, _ = annotate_until(state, self.entries, st.seed_slices, round_no=0)
        if state.spent < st.seed_slices:
            raise SimulationError(f"the pool holds only {state.spent} usable slices for a seed set of {st.seed_slices}")
        key = settings_key({"loop": "seed", "seed": seed, "state": state.to_json(), "epochs": st.epochs,
                            **self.common})
        run_dir = self.out / "loop" / "_seed-set" / f"seed{seed}" / "round0"
        label = f"seed set seed {seed}"
        stored = read_result(run_dir / "result.json", key)
        if stored is not None:
            self.skipped.append(label)
            return stored, key
        self.bar.set_postfix_str(f"seed set, seed {seed}")
        model = _Model("seed-set", seed, "seed-set", 0, run_dir, key, state, None, st.epochs)
        return self._train(label, model), key

    def curve(self, strategy: str, seed: int, r0: dict, key0: str) -> None:
        """Rounds 1…n of one strategy, each warm-started from the previous round's model."""
        res, key = r0, key0
        for k in range(1, self.settings.rounds + 1):
            got = self.round(strategy, seed, k, res, key)
            if got is None:
                return
            res, key = got
            self.results.append(res)
            self.bar.update(1)
            self._report()

    def round(self, strategy: str, seed: int, k: int, prev: dict, prev_key: str) -> tuple[dict, str] | None:
        """Round ``k``: the stored result, or score → select → annotate → train → evaluate; ``None`` once the
        strategy finds no slice left to assign."""
        st = self.settings
        target = st.target(k)
        run_dir = self.out / "loop" / strategy / f"seed{seed}" / f"round{k}"
        # The key chains the previous round's key: a changed earlier round invalidates later ones.
        key = settings_key({"loop": strategy, "seed": seed, "round": k, "prev": prev_key,
                            "round_slices": target - st.target(k - 1), "round_epochs": st.round_epochs,
                            **self.common})
        label = f"{strategy} seed {seed} round {k}"
        stored = read_result(run_dir / "result.json", key)
        if stored is not None:
            self.skipped.append(label)
            return stored, key
        self.bar.set_postfix_str(label)
        prev_ckpt = Path(prev["checkpoint"])
        scores = self._selection_scores(strategy, prev_ckpt, k)
        state, got = annotate_until(_continued_state(prev, st, strategy, seed), self.entries, target, round_no=k,
                                    scores=scores)
        if not got:
            self.log(f"{label}: no slices left to assign; stopping this strategy")
            return None
        res = self._train(label, _Model(strategy, seed, strategy, k, run_dir, key, state, prev_ckpt, st.round_epochs))
        td = res["scores"]["tissue_dice"]
        self.log(f"{label}: {res['n_slices']} slices, tissue Dice {td if td is None else round(td, 4)}, "
                 f"train {res['train_seconds']:.0f} s")
        return res, key

    def _selection_scores(self, strategy: str, checkpoint: Path, k: int) -> dict | None:
        """What the strategy selects by: the oracle's class counts, the previous model's uncertainty, or nothing."""
        if strategy in SCORED_SELECTIONS:
            if self.probabilities_fn is None:
                raise SimulationError(f"the {strategy} strategy needs a probabilities function")
            return _scores_for(checkpoint, self.entries, self.job.pool, self.probabilities_fn, self.job.oracle, k - 1)
        return self.class_counts if strategy in CLASS_SELECTIONS else None

    def _train(self, label: str, model: _Model) -> dict:
        return run_one(self.executor, label, model.run_dir / "result.json", partial(self.job.run, model))

    def _report(self) -> None:
        if self.on_result is not None:
            self.on_result(self.results)


def _continued_state(res: dict, settings: LoopSettings, strategy: str, seed: int) -> Any:
    """The annotation state after the model ``res``, planning on with ``strategy`` from there."""
    from strategies.plan.incremental import AssignmentState

    state = AssignmentState.from_json(res["state"])
    return replace(state, config=_config(settings, strategy, state.spent, seed))


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

    settings.check()
    if executor is not None:  # each round is one job (waited for): a fresh oracle keeps its cache out of the pickle
        oracle = Oracle(split.pool)
    job = _ModelJob(settings, split, {e.id: e for e in entries}, {s.id: s for s in split.pool}, oracle,
                    train_settings, train_fn, evaluate_fn, progress)
    total_models = len(seeds) * (1 + settings.rounds * len(settings.strategies))
    bar = tqdm(total=total_models, desc="loop", unit="model", disable=not progress, position=0)
    loop = _Loop(settings, out, entries, common, job, probabilities_fn, class_counts, executor, log, on_result, bar)
    try:
        for seed in seeds:
            loop.run_seed(seed)
    finally:
        bar.close()
    return loop.results, loop.skipped
