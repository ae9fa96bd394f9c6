"""``neolabel train --plan``: a slice plan becomes partial labels and a tiny training run."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def test_train_command_with_plan(synth_root, synth_dataset, tmp_path):
    import typer

    from apps.commands.train import train
    from training.model.checkpoint import load_checkpoint

    app = typer.Typer()
    app.command()(train)  # one command: invoked without its name (apps/cli.py registers it as `train`)

    ids = [s.id for s in synth_dataset.with_labels()]
    plan = {"assignments": [
        {"image": ids[0], "axis": "axial", "voxel_axis": 2, "indices": [15, 20]},
        {"image": ids[1], "axis": "axial", "voxel_axis": 2, "indices": [18]},
    ]}
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [str(synth_root), "--out", str(out), "--plan", str(plan_path),
                                   "--epochs", "1", "--preset", "tiny", "--iterations", "2", "--batch-size", "1",
                                   "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(out / "last.pt")
    assert ck.epoch == 1 and ck.train_config["n_train"] == 2
    assert sorted(ck.train_config["train_ids"]) == sorted(ids[:2])

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "nope", "axis": "axial", "voxel_axis": 2, "indices": [1]}]))
    res = CliRunner().invoke(app, [str(synth_root), "--out", str(tmp_path / "x"), "--plan", str(bad),
                                   "--epochs", "1", "--preset", "tiny", "--no-progress"])
    assert res.exit_code != 0 and "not in the dataset" in res.output


def test_resume_without_a_checkpoint_is_refused(synth_root, tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.commands.train import train

    app = typer.Typer()
    app.command()(train)
    res = CliRunner().invoke(app, [str(synth_root), "--out", str(tmp_path / "typo"), "--resume", "--preset", "tiny"])
    assert res.exit_code != 0 and "nothing to resume" in res.output
    assert not (tmp_path / "typo").exists()
