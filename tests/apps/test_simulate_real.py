"""The simulation end to end with the real tiny training, prediction and evaluation (no fakes)."""

from __future__ import annotations

import csv
import json
import math

from typer.testing import CliRunner

from apps.simulation.config import SimulationConfig
from apps.simulation.run import run_simulation
from training.data import labels as L

SHAPE = (32, 40, 40)
SPACING = 3.4


def test_real_tiny_simulation_end_to_end(tmp_path):
    """No DATA: a synthetic set is generated, two conditions are trained for real and scored."""
    out = tmp_path / "sim"
    cfg = SimulationConfig(
        out=out, epochs=1, iterations=2, seeds=1, axes=("axial",), test_scans=2, full_volumes=1,
        synth_subjects=6, synth_shape=SHAPE, synth_spacing=SPACING,
        train_overrides={"threads": 1}, progress=False,
    )
    summary = run_simulation(cfg, log=lambda m: None)
    assert (out / "data" / "participants.tsv").is_file()
    assert len(summary.results) == 2
    for r in summary.results:
        ckpt = r["checkpoint"]
        assert ckpt.endswith(".pt")
        s = r["scores"]
        assert s["n_subjects"] == 2
        assert 0.0 <= s["tissue_dice"] <= 1.0
        assert s["tissue_hd95"] is None or s["tissue_hd95"] >= 0
        assert r["train_seconds"] > 0
        assert not set(r["train_ids"]) & set(r["test_ids"])
    assert len({r["n_slices"] for r in summary.results}) == 1
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * (L.NUM_CLASSES + 1)
    assert all(r["dice"] == "" or not math.isnan(float(r["dice"])) for r in rows)
    trained = json.loads((out / "runs" / "d33-axial" / "seed0" / "model" / "train_config.json").read_text())
    assert trained["iterations_per_epoch"] == 2 and trained["epochs"] == 1
    # Resume through the command line with the same settings: nothing is retrained, the table is printed.
    import typer

    from apps.commands.simulate import simulate

    app = typer.Typer()
    app.command()(simulate)
    res = CliRunner().invoke(app, ["--out", str(out), "--epochs", "1", "--iterations", "2", "--seeds", "1",
                                   "--axis", "axial", "--test-scans", "2", "--full-volumes", "1",
                                   "--synth-subjects", "6", "--synth-shape", "32,40,40", "--synth-spacing", "3.4",
                                   "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "2 result(s), 2 reused" in res.output
    assert "| d33-axial |" in res.output


def test_cli_rejects_bad_options(tmp_path):
    import typer

    from apps.commands.simulate import simulate

    app = typer.Typer()
    app.command()(simulate)
    res = CliRunner().invoke(app, ["--out", str(tmp_path / "o"), "--dispersion", "1.7", "--quiet"])
    assert res.exit_code == 2
    assert "dispersion" in res.output
    assert not (tmp_path / "o").exists()


def test_real_tiny_loop_with_uncertainty(tmp_path):
    """Loop mode with the real model: the uncertainty strategy ranks slices by the model's own predictions."""
    out = tmp_path / "loop"
    cfg = SimulationConfig(
        out=out, epochs=1, iterations=2, seeds=1, rounds=1, strategies=("uncertainty",), seed_slices=8,
        round_slices=5, round_epochs=1, test_scans=2, full_volumes=1, synth_subjects=6, synth_shape=SHAPE,
        synth_spacing=SPACING, train_overrides={"threads": 1}, progress=False,
    )
    summary = run_simulation(cfg, log=lambda m: None)
    rs = sorted(summary.results, key=lambda r: r["round"])
    assert [r["n_slices"] for r in rs] == [8, 13]
    assert rs[1]["init"] == rs[0]["checkpoint"]  # warm start from the previous round
    assert all(0.0 <= r["scores"]["tissue_dice"] <= 1.0 for r in rs)
    assert (out / "learning_curve.png").is_file()
    assert (out / "plans" / "loop_states.json").is_file()


def test_cli_budget_curves_and_a_claspe_loop_with_real_training(tmp_path):
    """The documented commands: budget curves write a row per budget and seed and CIs; the loop with the
    new selections writes a learning curve (real tiny model, probabilities and scores)."""
    import typer

    from apps.commands.simulate import simulate

    app = typer.Typer()
    app.command()(simulate)
    out = tmp_path / "curves"
    tiny = ["--iterations", "2", "--test-scans", "2", "--synth-subjects", "6", "--synth-shape", "32,40,40",
            "--synth-spacing", "3.4", "--threads", "1", "--quiet"]
    res = CliRunner().invoke(app, ["--out", str(out), "--budgets", "2,10,100", "--epochs", "1", "--seeds", "2",
                                   "--axis", "axial", *tiny])
    assert res.exit_code == 0, res.output
    with open(out / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["class"] == "tissue"]
    assert {(r["budget"], r["seed"]) for r in rows} == {(b, s) for b in ("2", "10", "100") for s in ("0", "1")}
    md = (out / "results.md").read_text()
    assert "95% CI" in md and "AUBC" in md and "of full" in md
    loop = tmp_path / "loop"
    res = CliRunner().invoke(app, ["--out", str(loop), "--rounds", "2", "--strategy", "claspe,fgrandom",
                                   "--epochs", "1", "--seeds", "1", "--seed-slices", "4", "--round-slices", "3",
                                   *tiny])
    assert res.exit_code == 0, res.output
    assert (loop / "learning_curve.png").stat().st_size > 1000
    states = json.loads((loop / "plans" / "loop_states.json").read_text())
    claspe = [a for k, st in states.items() if k.startswith("claspe") for a in st["annotated"]]
    assert claspe and "claspe − fgrandom" in (loop / "results.md").read_text()
