"""Simulation bookkeeping with fast fake training (budgets, test isolation, result files, resume, loop).

Training and evaluation are replaced by fakes here because these tests are about which slices,
scans and results the simulation handles; tests/test_simulate_real.py runs the real training.
"""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from apps.simulation.backend import Scores, TrainOutcome
from apps.simulation.conditions import ConditionError, build_conditions, parse_dispersion
from apps.simulation.config import SimulationConfig
from apps.simulation.data import SimulationError
from apps.simulation.report import CSV_COLUMNS
from apps.simulation.run import run_simulation
from training.data import labels as L
from training.data.nifti import load_volume, save_volume

SHAPE = (32, 40, 40)
SPACING = 3.4


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> Path:
    """A tiny dHCP tree with enough scans for a baseline of 1 volume and 3x dispersion, plus 2 test scans."""
    from training.data.synthetic.write import write_study_set

    root = tmp_path_factory.mktemp("simdata") / "dhcp"
    write_study_set(root, subjects=9, shape=SHAPE, spacing=SPACING, seed=3)
    return root


class FakeBackend:
    """Records every training job; 'trains' by writing a small file; scores depend on the job only."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.jobs: list = []
        self.evaluated: list = []
        self.fail_after = fail_after

    def train(self, job):
        if self.fail_after is not None and len(self.jobs) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.jobs.append(job)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = job.out_dir / "best.pt"
        n = sum(int((np.asarray(v) != L.IGNORE).sum()) if not isinstance(v, Path) else 1
                for v in job.partial_labels.values())
        ckpt.write_text(json.dumps({"name": job.name, "seed": job.seed, "annotated": n}))
        return TrainOutcome(checkpoint=ckpt, seconds=0.01, info={})

    def evaluate(self, checkpoint, subjects):
        self.evaluated.append([s.id for s in subjects])
        info = json.loads(Path(checkpoint).read_text())
        base = 0.5 + 0.01 * (zlib.crc32(info["name"].encode()) % 20) + 0.001 * info["seed"]
        dice = {c: base for c in range(L.NUM_CLASSES)}
        hd = {c: 3.0 for c in range(L.NUM_CLASSES)}
        return Scores(dice=dice, hd95=hd, tissue_dice=base, tissue_hd95=3.0, mean_dice=base,
                      n_subjects=len(subjects))

    def probabilities(self, checkpoint, subject):
        shape = load_volume(subject.image).shape
        rng = np.random.default_rng(zlib.crc32(f"{checkpoint}|{subject.id}".encode()))
        p = rng.random((L.NUM_CLASSES, *shape)).astype(np.float32)
        return p / p.sum(axis=0, keepdims=True)


def _cfg(out: Path, root: Path, **kw) -> SimulationConfig:
    base = dict(out=out, data=root, epochs=1, iterations=1, seeds=2, test_scans=2, full_volumes=1, progress=False)
    base.update(kw)
    return SimulationConfig(**base)


def _run(cfg, fake):
    return run_simulation(cfg, train_fn=fake.train, evaluate_fn=fake.evaluate, probabilities_fn=fake.probabilities,
                          log=lambda m: None)


def test_every_condition_spends_the_same_budget(tmp_path, sim_root):
    fake = FakeBackend()
    # A wide margin keeps the budget small enough for one slice per scan on 7 pool scans.
    cfg = _cfg(tmp_path / "out", sim_root, dispersions=("0.33", "1slice"), margins=(0.4,),
               axes=("sagittal", "coronal", "axial", "random", "mixed"), selections=("equidistant", "random"))
    summary = _run(cfg, fake)
    n_conditions = 1 + 2 * 5 * 2
    assert len(summary.results) == n_conditions * 2
    for seed in (0, 1):
        rs = [r for r in summary.results if r["seed"] == seed]
        budget = summary.budgets[seed]
        assert budget > 0
        assert {r["n_slices"] for r in rs} == {budget}
        # The plans on disk say the same, slice by slice.
        for r in rs:
            plan = json.loads((tmp_path / "out" / "plans" / f"{r['condition']['name']}__seed{seed}.json").read_text())
            assert sum(len(a["indices"]) for a in plan["assignments"]) == budget
    # Dispersion spreads the same budget over more scans than the baseline.
    full = [r for r in summary.results if r["condition"]["full"]]
    d33 = [r for r in summary.results if r["condition"]["dispersion"] == 0.33]
    one = [r for r in summary.results if r["condition"]["dispersion"] == "1slice"]
    assert min(r["n_volumes"] for r in d33) > max(r["n_volumes"] for r in full)
    assert one and all(r["n_volumes"] == r["n_slices"] for r in one)


def test_partial_labels_match_the_plan_and_the_test_set_is_never_trained_on(tmp_path, sim_root):
    fake = FakeBackend()
    cfg = _cfg(tmp_path / "out", sim_root, seeds=1, axes=("sagittal", "axial"))
    summary = _run(cfg, fake)
    sim = json.loads((tmp_path / "out" / "simulation.json").read_text())
    test_ids = set(sim["test_ids"])
    assert test_ids and not test_ids & set(sim["pool_ids"])
    for job in fake.jobs:
        ids = {s.id for s in job.subjects}
        assert not ids & test_ids
        assert set(job.partial_labels) == ids
        plan = json.loads((tmp_path / "out" / "plans" / f"{job.name}__seed{job.seed}.json").read_text())
        if job.name == "full":
            # The baseline trains on the dense labels of whole volumes.
            assert all(isinstance(v, Path) for v in job.partial_labels.values())
            continue
        annotated_slices = 0
        for sid, lab in job.partial_labels.items():
            lab = np.asarray(lab)
            ann = lab != L.IGNORE
            for a in plan["assignments"]:
                if a["image"] != sid:
                    continue
                other = tuple(i for i in range(3) if i != a["voxel_axis"])
                per_slice = ann.any(axis=other)
                annotated_slices += int(per_slice[a["indices"]].all()) * len(a["indices"])
            # Nothing outside the planned slices is annotated.
            planned = np.zeros(lab.shape, bool)
            for a in plan["assignments"]:
                if a["image"] == sid:
                    idx = [slice(None)] * 3
                    idx[a["voxel_axis"]] = a["indices"]
                    planned[tuple(idx)] = True
            assert not (ann & ~planned).any()
            assert ann[planned].all()
        assert annotated_slices == summary.budgets[job.seed]
    # Every model is evaluated on exactly the held-out test scans.
    assert fake.evaluated and all(set(e) == test_ids for e in fake.evaluated)


def test_a_partial_test_label_is_refused(tmp_path, sim_root):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(sim_root, root)
    from apps.simulation.data import split_subjects
    from training.data.dataset import open_dataset

    split = split_subjects(open_dataset(root).subjects, 2, 0)
    lab = load_volume(split.test[0].label)
    data = lab.data.copy()
    data[0] = L.IGNORE
    save_volume(split.test[0].label, data, lab.affine, np.uint8)
    fake = FakeBackend()
    with pytest.raises(ValueError, match="dense"):
        _run(_cfg(tmp_path / "out", root, seeds=1), fake)
    assert fake.jobs == []


def test_result_files_have_the_right_columns(tmp_path, sim_root):
    fake = FakeBackend()
    cfg = _cfg(tmp_path / "out", sim_root, axes=("sagittal", "axial"))
    summary = _run(cfg, fake)
    out = tmp_path / "out"
    with open(out / "results.csv") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    n_models = 3 * 2
    assert len(rows) == n_models * (L.NUM_CLASSES + 1)  # 10 classes + the tissue mean
    assert {r["condition"] for r in rows} == {"full", "d33-sagittal", "d33-axial"}
    assert {r["class"] for r in rows} == {str(c) for c in range(L.NUM_CLASSES)} | {"tissue"}
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    md = (out / "results.md").read_text()
    for name in ("full", "d33-sagittal", "d33-axial"):
        assert f"| {name} |" in md
    assert "±" in md and "Findings" in md
    for fig in ("dice_by_condition.png", "dice_per_class.png"):
        assert (out / fig).stat().st_size > 1000
    timing = json.loads((out / "timing.json").read_text())
    assert len(timing["train_seconds"]) == n_models
    assert len(summary.files) >= 4


def test_resume_skips_finished_conditions(tmp_path, sim_root):
    out = tmp_path / "out"
    cfg = _cfg(out, sim_root, axes=("sagittal", "axial"))
    interrupted = FakeBackend(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, interrupted)
    assert len(list(out.glob("runs/*/seed*/result.json"))) == 2
    # The third model was interrupted during training: pretend it had written an epoch checkpoint.
    started = [p.parent for p in out.glob("runs/*/seed*/model/simulation-key.txt")
               if not (p.parent.parent / "result.json").exists()]
    assert len(started) == 1
    (started[0] / "last.pt").write_text("epoch checkpoint")
    resumed = FakeBackend()
    summary = _run(cfg, resumed)
    assert len(resumed.jobs) == 6 - 2  # the two finished models are not retrained
    # ... and the interrupted one continues from its last epoch instead of starting over.
    assert [j.settings.get("resume", False) for j in resumed.jobs] == [True, False, False, False]
    assert resumed.jobs[0].out_dir == started[0]
    assert len(summary.skipped) == 2 and len(summary.results) == 6
    again = FakeBackend()
    summary = _run(cfg, again)
    assert again.jobs == [] and len(summary.skipped) == 6
    # Changing what a model depends on (here the epochs) retrains instead of reusing.
    changed = FakeBackend()
    _run(_cfg(out, sim_root, axes=("sagittal", "axial"), epochs=2), changed)
    assert len(changed.jobs) == 6


def test_loop_mode_grows_by_the_round_budget(tmp_path, sim_root):
    fake = FakeBackend()
    strategies = {"uncertainty", "random", "equidistant"}
    cfg = _cfg(tmp_path / "out", sim_root, seeds=1, rounds=2, seed_slices=6, round_slices=5,
               strategies=tuple(sorted(strategies)))
    summary = _run(cfg, fake)
    loop = summary.results
    assert {r["strategy"] for r in loop} == strategies
    for st in strategies:
        rs = sorted((r for r in loop if r["strategy"] == st), key=lambda r: r["round"])
        assert [r["round"] for r in rs] == [0, 1, 2]
        assert [r["n_slices"] for r in rs] == [6, 11, 16]
        # Annotations only accumulate: every slice of a round is still annotated in the next.
        for a, b in zip(rs, rs[1:], strict=False):
            for img, axes in a["state"]["annotated"].items():
                for ax, idx in axes.items():
                    assert set(idx) <= set(b["state"]["annotated"][img][ax])
    # Round 0 is trained once per seed and shared; later rounds warm-start from the previous checkpoint.
    assert len(fake.jobs) == 1 + 2 * 3
    warm = [j for j in fake.jobs if j.name != "seed-set"]
    assert all(j.init is not None for j in warm)
    out = tmp_path / "out"
    assert (out / "learning_curve.png").stat().st_size > 1000
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["round"] for r in rows} == {"0", "1", "2"}
    # Resume: nothing is retrained.
    again = FakeBackend()
    _run(cfg, again)
    assert again.jobs == []


def test_condition_parsing_and_errors(tmp_path, sim_root):
    assert parse_dispersion("33%") == pytest.approx(0.33)
    assert parse_dispersion("1slice") == "1slice"
    conds = build_conditions(["0.33", "1slice"], ["axial", "mixed"], ["equidistant", "random"], [0.1, 0.2])
    assert conds[0].full and len(conds) == 1 + 2 * 2 * 2 * 2
    assert len({c.name for c in conds}) == len(conds)
    for bad in ("0", "1.5", "abc"):
        with pytest.raises(ConditionError):
            parse_dispersion(bad)
    with pytest.raises(ConditionError):
        build_conditions(["0.33"], ["diagonal"])
    with pytest.raises(ConditionError):
        build_conditions(["0.33"], ["axial"], margins=[0.6])
    # A budget the pool cannot pay for is a clear error, not a silently smaller budget.
    fake = FakeBackend()
    with pytest.raises(SimulationError, match="pays for"):
        _run(_cfg(tmp_path / "out", sim_root, full_volumes=6, seeds=1, axes=("axial",)), fake)
    assert fake.jobs == []
