"""--conf parsing (typed, clear errors), the generated docs table, and `neolabel serve` argument handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from strategies.annotate.settings import AppConfig, ConfError, conf_table_markdown

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_typed_values():
    cfg = AppConfig.from_conf({})
    assert cfg.preset == "cpu" and cfg.budget_dispersion == pytest.approx(0.33) and cfg.retrain_every_labels == 0
    cfg = AppConfig.from_conf({"epochs": "3", "budget_dispersion": "1", "budget_axis": "Sagittal",
                               "infer_fast": "false", "retrain_interval_minutes": "2.5", "server_mode": "true"})
    assert cfg.epochs == 3 and cfg.budget_dispersion == 1.0 and cfg.budget_axis == "sagittal"
    assert cfg.infer_fast is False and cfg.retrain_interval_minutes == 2.5
    assert cfg.explicit == {"epochs", "budget_dispersion", "budget_axis", "infer_fast", "retrain_interval_minutes"}


@pytest.mark.parametrize(
    "conf, text",
    [
        ({"epochs": "two"}, "epochs 'two': expected an integer"),
        ({"epochs": "0"}, "must be ≥ 1"),
        ({"budget_dispersion": "0"}, "must be > 0"),
        ({"budget_dispersion": "1.5"}, "must be ≤ 1"),
        ({"budget_axis": "oblique"}, "expected one of sagittal, coronal, axial, random, mixed"),
        ({"budget_margin": "nan"}, "finite"),
        ({"preset": "huge"}, "tiny, cpu, paper"),
        ({"infer_fast": "maybe"}, "true or false"),
        ({"budget_dispersoin": "0.5"}, "unknown --conf key(s) budget_dispersoin"),
    ],
)
def test_bad_values_name_the_key(conf, text):
    with pytest.raises(ConfError, match=None) as exc:
        AppConfig.from_conf(conf)
    assert text in str(exc.value)


def test_docs_table_lists_every_key_with_its_default():
    doc = (REPO / "docs" / "CONF.md").read_text()
    assert conf_table_markdown() in doc, "docs/CONF.md is out of date: regenerate it from conf_table_markdown()"
    assert conf_table_markdown().strip() in (REPO / "README.md").read_text(), "README's --conf table is out of date"
    for key in AppConfig.conf_keys():
        assert f"| `{key}` |" in doc


def test_serve_parses_repeated_conf_pairs_and_refuses_bad_ones(tmp_path):
    from typer.testing import CliRunner

    from apps.commands.serve import parse_conf_args, serve

    assert parse_conf_args(["--conf", "epochs", "3", "--conf", "budget_axis", "coronal"]) == [
        ("epochs", "3"), ("budget_axis", "coronal")]
    with pytest.raises(typer.BadParameter):
        parse_conf_args(["--conf", "epochs"])
    with pytest.raises(typer.BadParameter):
        parse_conf_args(["--prot", "8000"])
    cli = typer.Typer()
    cli.command(context_settings=serve.context_settings)(serve)
    cli.command("other")(lambda: None)
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", "--conf", "budget_axis", "oblique", "--studies", str(tmp_path)])
    assert r.exit_code == 2 and "budget_axis" in r.output
    r = runner.invoke(cli, ["serve", "--studies", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "studies" in r.output
