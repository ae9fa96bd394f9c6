"""The demo of `neolabel serve`: generated once and reused, a first model trained, its held-out Dice printed."""

from __future__ import annotations

import json
import os


def test_demo_is_generated_once_bootstrapped_and_served(inprocess_app, tmp_path):
    from apps.demo import bootstrap_model, prepare_demo
    from apps.studies import servable_studies
    from neonatal_app.lib.configs.segmentation import model_path

    lines: list[str] = []
    demo = prepare_demo(tmp_path, served=2, train=2, validation=1, shape=(32, 40, 40), spacing=3.4,
                        say=lines.append)
    marker = demo.marker.stat().st_mtime_ns
    again = prepare_demo(tmp_path, served=2, train=2, validation=1, shape=(32, 40, 40), spacing=3.4,
                         say=lines.append)
    assert again.marker.stat().st_mtime_ns == marker and "reusing" in lines[-1]

    studies = servable_studies(demo.served)
    assert sorted(p.name for p in studies.glob("*.nii.gz")) == ["sub-SYN0001_ses-1001.nii.gz",
                                                               "sub-SYN0002_ses-1002.nii.gz"]
    assert not (studies / "labels" / "final").exists()  # the tree's dense labels are never served
    assert len(list((studies / "labels" / "brain_mask").glob("*.nii.gz"))) == 2

    mp = model_path(studies)
    info = bootstrap_model(demo, mp, preset="tiny", iterations=2, iterations_per_epoch=2, say=lines.append,
                           progress=False)
    assert mp.is_file() and info["iterations"] == 2
    text = "\n".join(lines)
    assert "held-out Dice" in text and "tissue mean" in text
    # two iterations learn nothing: the weak classes are named in a warning
    assert info["weak_classes"] and "warning: held-out Dice below 0.5" in text
    assert 0.0 <= info["held_out_tissue_dice"] <= 1.0
    assert json.loads((demo.root / "bootstrap.json").read_text())["model"] == str(mp)

    with inprocess_app(studies, {"validation_dir": str(demo.validation)}) as (client, _app):
        info = client.get("/info/").json()
        assert "segmentation" in info["models"] and info["budget"]["scans_total"] == 2


def test_serve_prepare_only_reuses_the_demo_and_sets_up_monailabel(make_model, tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.commands.serve import serve
    from apps.demo import demo_paths, prepare_demo
    from apps.studies import servable_studies
    from neonatal_app.lib.configs.segmentation import model_path

    demo = prepare_demo(tmp_path, served=1, train=1, validation=1, shape=(32, 40, 40), spacing=3.4,
                        say=lambda s: None)
    make_model(model_path(servable_studies(demo.served)))  # no bootstrap training in this test
    cli = typer.Typer()
    cli.command(context_settings=serve.context_settings)(serve)
    cli.command("other")(lambda: None)
    saved = dict(os.environ)
    try:
        r = CliRunner().invoke(cli, ["serve", "--workdir", str(tmp_path), "--prepare-only", "--port", "8123",
                                     "--conf", "budget_axis", "coronal"])
        assert r.exit_code == 0, r.output
        assert "reusing the demo model" in r.output
        assert os.environ["MONAI_LABEL_TRACKING_ENABLED"] == "false"
        assert os.environ["MONAI_LABEL_AUTO_UPDATE_SCORING"] == "false"
        conf = json.loads(os.environ["MONAI_LABEL_APP_CONF"])
        assert conf["budget_axis"] == "coronal" and conf["validation_dir"] == str(demo_paths(tmp_path).validation)
        assert os.environ["MONAI_LABEL_STUDIES"] == str(servable_studies(demo.served))
    finally:
        os.environ.clear()
        os.environ.update(saved)
