"""``neolabel split``: the age split of a study set written as JSON (the rule is tested in tests/training/fit)."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from apps.commands.split import split
from training.data.splits import SplitError, read_split, write_split


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(split)  # one command: invoked without its name (apps/cli.py registers it as `split`)
    return app


def test_split_cli_on_a_synthetic_set(synth_root, synth_dataset, tmp_path):
    out = tmp_path / "split.json"
    res = CliRunner().invoke(_app(), [str(synth_root), "--out", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    sp = read_split(out)
    ages = {s.id: s.scan_age for s in synth_dataset.subjects}
    assert set(sp["source"]) | set(sp["target_train"]) | set(sp["target_test"]) <= set(ages)
    assert min(ages[i] for i in sp["source"]) >= max(ages[i] for i in sp["target_train"] + sp["target_test"])
    assert "source" in res.output
    bad = tmp_path / "bad.json"
    write_split({**sp, "target_test": sp["source"][:1]}, bad)
    with pytest.raises(SplitError, match="more than one group"):
        read_split(bad)
    assert json.loads(out.read_text())["seed"] == 1


def test_split_cli_refuses_bad_sizes(synth_root, tmp_path):
    res = CliRunner().invoke(_app(), [str(synth_root), "--out", str(tmp_path / "s.json"), "--target-n", "1"])
    assert res.exit_code == 2 and "error:" in res.output and not (tmp_path / "s.json").exists()
