"""Budget curves and loop learning curves with fast fake training: which budgets, which models, which files.

The fake's Dice grows with the annotated slices (plus a seed offset), so the curves, AUBC and
paired comparisons have something to say; tests/apps/test_simulate_real.py runs the real training.
"""

from __future__ import annotations

import csv
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from apps.simulation.backend import Scores, TrainOutcome
from apps.simulation.budgets import budget_slices, pool_capacity
from apps.simulation.config import SimulationConfig
from apps.simulation.curves import build_curves
from apps.simulation.data import SimulationError
from apps.simulation.run import run_simulation
from training.data import labels as L
from training.data.nifti import load_volume

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> Path:
    """9 tiny scans: 7 in the training pool, 2 held out."""
    from training.data.synthetic.write import write_study_set

    root = tmp_path_factory.mktemp("budgetdata") / "dhcp"
    write_study_set(root, subjects=9, shape=(32, 40, 40), spacing=3.4, seed=3)
    return root


class CurveFake:
    """'Trains' by counting annotated slices; Dice rises with them, differs a little per seed and strategy."""

    def __init__(self) -> None:
        self.jobs: list = []

    def train(self, job):
        self.jobs.append(job)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = job.out_dir / "best.pt"
        n = 0
        for v in job.partial_labels.values():
            lab = np.asarray(v) if not isinstance(v, Path) else load_volume(v).data
            n += int((lab != L.IGNORE).any(axis=(0, 1)).sum())
        ckpt.write_text(json.dumps({"name": job.name, "seed": job.seed, "slices": n}))
        return TrainOutcome(checkpoint=ckpt, seconds=0.01, info={})

    def evaluate(self, checkpoint, subjects):
        info = json.loads(Path(checkpoint).read_text())
        base = min(0.95, 0.3 + 0.1 * np.log1p(info["slices"])) + 0.01 * info["seed"]
        base += 0.002 * (zlib.crc32(info["name"].encode()) % 5)
        return Scores(dice={c: base for c in range(L.NUM_CLASSES)}, hd95={c: 3.0 for c in range(L.NUM_CLASSES)},
                      tissue_dice=base, tissue_hd95=3.0, mean_dice=base, n_subjects=len(subjects))

    def probabilities(self, checkpoint, subject):
        shape = load_volume(subject.image).shape
        rng = np.random.default_rng(zlib.crc32(f"{checkpoint}|{subject.id}".encode()))
        p = rng.random((L.NUM_CLASSES, *shape)).astype(np.float32)
        return p / p.sum(axis=0, keepdims=True)


def _run(cfg, fake):
    return run_simulation(cfg, train_fn=fake.train, evaluate_fn=fake.evaluate, probabilities_fn=fake.probabilities,
                          log=lambda m: None)


def _cfg(out: Path, root: Path, **kw) -> SimulationConfig:
    base = dict(out=out, data=root, epochs=1, iterations=1, seeds=2, test_scans=2, progress=False, axes=("axial",))
    base.update(kw)
    return SimulationConfig(**base)


def test_budget_curves_spend_each_budget_and_skip_what_the_pool_cannot_pay(tmp_path, sim_root):
    fake = CurveFake()
    out = tmp_path / "out"
    cfg = _cfg(out, sim_root, budgets=("5", "20", "100"), dispersions=("1slice", "0.33", "1.0"),
               selections=("equidistant", "fgrandom"))
    summary = _run(cfg, fake)
    sim = json.loads((out / "simulation.json").read_text())
    with open(out / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["class"] == "tissue"]
    # a row per budget and seed for every curve that the pool can pay for at that budget
    whole = {(r["budget"], r["seed"]) for r in rows if r["dispersion"] == "1.0"}
    assert whole == {(b, s) for b in ("5", "20", "100") for s in ("0", "1")}
    from strategies.plan.extents import entries_from_dataset
    from training.data.dataset import open_dataset

    pool = [e for e in entries_from_dataset(open_dataset(sim_root), subjects=None)[0] if e.id in sim["pool_ids"]]
    cap = pool_capacity(pool, "axial", 0.1)
    for r in summary.results:
        assert r["n_slices"] == budget_slices(r["condition"]["budget"], cap)
    # one slice per scan on 7 scans cannot pay for 20 % of the slices: listed, not run
    assert any("b20-1slice-axial seed 0" in line for line in sim["not_run"])
    assert not any(r["condition"]["name"].startswith("b20-1slice") for r in summary.results)
    # 100 % = every usable slice of every pool scan, whatever the dispersion and selection: one model per seed
    full = [r for r in summary.results if r["condition"]["budget"] == 100.0]
    assert len(full) == 2 * 3 * 2 and sum("shared_with" not in r for r in full) == 2
    assert {r["n_volumes"] for r in full} == {len(sim["pool_ids"])}
    assert len(fake.jobs) == len(summary.results) - sum("shared_with" in r for r in summary.results)
    assert all(r["scores"] == next(x for x in summary.results if x["condition"]["name"] == r["shared_with"]
                                   and x["seed"] == r["seed"])["scores"] for r in summary.results if "shared_with" in r)
    md = (out / "results.md").read_text()
    assert "## Budget curves" in md and "AUBC" in md and "[" in md
    assert "Full annotation (100 %" in md and "of full" in md
    assert "d33-axial − d33-axial-fgrandom" in md and "d33-axial-fgrandom − d100-axial-fgrandom" in md
    assert "within noise" in md or "better" in md or "worse" in md
    for fig in ("budget_curve.png", "budget_curve_per_class.png"):
        assert (out / fig).stat().st_size > 1000
    again = CurveFake()
    _run(cfg, again)
    assert again.jobs == []  # resume: nothing retrained


def test_loop_with_budgets_and_the_new_strategies(tmp_path, sim_root):
    fake = CurveFake()
    out = tmp_path / "loop"
    cfg = _cfg(out, sim_root, seeds=2, rounds=2, budgets=("5", "10", "20"), strategies=("claspe", "fgrandom"))
    summary = _run(cfg, fake)
    for st in ("claspe", "fgrandom"):
        for seed in (0, 1):
            rs = sorted((r for r in summary.results if r["strategy"] == st and r["seed"] == seed),
                        key=lambda r: r["round"])
            assert [r["round"] for r in rs] == [0, 1, 2]
            assert rs[0]["n_slices"] < rs[1]["n_slices"] < rs[2]["n_slices"]
    md = (out / "results.md").read_text()
    assert "claspe − fgrandom" in md and "AUBC" in md
    assert (out / "learning_curve.png").stat().st_size > 1000
    with pytest.raises(SimulationError, match="--rounds must be 2"):
        _run(_cfg(tmp_path / "bad", sim_root, rounds=3, budgets=("5", "10", "20")), CurveFake())


def test_runs_of_other_seeds_merge_into_the_run_of_all_seeds(tmp_path, sim_root):
    """Seed 1 alone (``seed_offset``) gives seed 1's results of a two-seed run, and results read back
    from results.csv report the same tables: runs made at different times can be reported together."""
    from apps.simulation import report
    from apps.simulation.curves import loop_section

    kw = dict(rounds=2, budgets=("5", "10", "20"), strategies=("claspe", "fgrandom"))
    both = _run(_cfg(tmp_path / "both", sim_root, seeds=2, **kw), CurveFake())
    parts = [_run(_cfg(tmp_path / f"s{s}", sim_root, seeds=1, seed_offset=s, **kw), CurveFake()) for s in (0, 1)]
    assert [{r["seed"] for r in p.results} for p in parts] == [{0}, {1}]
    merged = [r for s in (0, 1) for r in report.read_csv(tmp_path / f"s{s}" / "results.csv")]
    assert sorted(map(str, report.csv_rows(merged))) == sorted(map(str, report.csv_rows(both.results)))
    assert loop_section(build_curves(merged)) == loop_section(build_curves(both.results))
    static = _run(_cfg(tmp_path / "static", sim_root, budgets=("5", "100"), dispersions=("0.33", "1.0")), CurveFake())
    again = report.read_csv(tmp_path / "static" / "results.csv")
    assert report.csv_rows(again) == report.csv_rows(static.results)
    assert report.markdown(again, {}) == report.markdown(static.results, {})
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a simulation results.csv"):
        report.read_csv(tmp_path / "x.csv")


def test_the_benchmark_merges_runs_of_one_configuration_and_refuses_others(tmp_path, sim_root, monkeypatch):
    """bench/annotation_efficiency.py: runs of other seeds report together (models counted once); a run of
    another configuration, or a seed twice, is refused with the reason."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("annotation_efficiency", ROOT / "bench" / "annotation_efficiency.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    record = {"subjects": 9, "thick_axis": None}
    res = tmp_path / "results"
    kw = dict(rounds=2, budgets=("5", "10", "20"), strategies=("claspe", "fgrandom"))
    trained = set()
    for s in (0, 1):
        done = _run(_cfg(tmp_path / f"loop{s}", sim_root, seeds=1, seed_offset=s, **kw), CurveFake())
        bench._copy(tmp_path / f"loop{s}", res / "runs" / f"loop-seeds{s}-{s}", record)
        trained |= {r["checkpoint"] for r in done.results}
    done = _run(_cfg(tmp_path / "static", sim_root, seeds=2, budgets=("5", "100"), dispersions=("0.33", "1.0")),
                CurveFake())
    bench._copy(tmp_path / "static", res / "runs" / "static-seeds0-1", record)
    trained |= {r["checkpoint"] for r in done.results}
    summary, _lines = bench.merge(res)
    assert summary["seeds"] == {"static": [0, 1], "loop": [0, 1]}
    # models counted once: the loop's seed-set model is both strategies' round 0, the 100 % plan is shared
    assert summary["models"] == len(trained) and len(trained) >= 2 * 5 + 2 * 2
    assert summary["best"] == "claspe" and "claspe" in summary["vs_fgrandom"]
    assert (res / "loop" / "results.csv").is_file() and (res / "static" / "budget_curve.png").is_file()
    with pytest.raises(SystemExit, match="seed"):
        bench._check_new_seeds(res, "loop", "loop-seeds1-2", [1, 2])
    bench._check_new_seeds(res, "loop", "loop-seeds1-1", [1])  # the same run again (a resume) is allowed

    shutil.copytree(res / "runs" / "loop-seeds1-1", res / "runs" / "loop-seeds1-9")
    with pytest.raises(SystemExit, match=r"seed\(s\) \[1\]"):
        bench.merge(res)
    shutil.rmtree(res / "runs" / "loop-seeds1-9")
    sim = json.loads((res / "runs" / "loop-seeds1-1" / "simulation.json").read_text())
    sim["config"]["iterations"] = 7
    (res / "runs" / "loop-seeds1-1" / "simulation.json").write_text(json.dumps(sim))
    with pytest.raises(SystemExit, match="config.iterations"):
        bench.merge(res)
    sim["config"].update(iterations=1, jobs=4, train_overrides={"threads": 1})  # how it ran: may differ
    (res / "runs" / "loop-seeds1-1" / "simulation.json").write_text(json.dumps(sim))
    assert bench.merge(res)[0]["seeds"]["loop"] == [0, 1]
    bench._copy(tmp_path / "loop1", res / "runs" / "loop-seeds1-1", {**record, "thick_axis": "sagittal"})
    with pytest.raises(SystemExit, match="data.thick_axis"):
        bench.merge(res)
