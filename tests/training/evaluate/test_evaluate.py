"""Evaluation reports: partial references in ``evaluate_arrays`` and `neolabel evaluate --json`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.data import labels as L
from training.evaluate.segmentation import evaluate_arrays
from training.metrics import EvaluationError, dice_per_class, hd95_per_class


def test_partial_reference_counts_annotated_only(drawem_label):
    p = drawem_label()
    r = p.copy()
    r[:, :, :10] = L.IGNORE
    p2 = p.copy()
    p2[:, :, :10] = 0  # wrong only where nothing is annotated
    assert all(v == 1.0 or math.isnan(v) for v in dice_per_class(p2, r).values())
    with pytest.raises(EvaluationError):
        hd95_per_class(p2, r, (1, 1, 1))
    m = evaluate_arrays("x", p2, r, (1, 1, 1))
    assert all(math.isnan(v) for v in m.hd95.values())


def test_evaluate_cli_json(tmp_path, synth_root):
    import torch
    from typer.testing import CliRunner

    from apps.cli import app
    from training.data.preprocess import PreprocessConfig
    from training.model.checkpoint import save_checkpoint
    from training.model.network import build_network, network_config

    torch.manual_seed(0)
    cfg = network_config("tiny")
    ckpt = save_checkpoint(
        tmp_path / "tiny.pt",
        build_network(cfg).eval(),
        network=cfg,
        preprocess=PreprocessConfig(),
        train_config={},
        epoch=1,
        metrics={},
    )
    out = tmp_path / "report.json"
    from training.data.dataset import open_dataset

    ids = [s.id for s in open_dataset(synth_root).with_labels()[:2]]
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(ckpt),
            str(synth_root),
            "--json",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--subjects",
            ",".join(ids),
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep == json.loads(out.read_text())
    assert rep["n_subjects"] == len(rep["subjects"]) == 2
    assert set(rep["dice"]) == {str(c) for c in range(L.NUM_CLASSES)}
    assert set(rep["hd95"]) == {str(c) for c in range(L.NUM_CLASSES)}
    assert "tissue_dice" in rep and "tissue_hd95" in rep
    for s in rep["subjects"]:
        vals = [v for v in s["dice"].values() if v is not None]
        assert all(0.0 <= v <= 1.0 for v in vals)
        tissue = [s["dice"][str(c)] for c in L.TISSUE if s["dice"][str(c)] is not None]
        if tissue:
            assert s["tissue_dice"] == pytest.approx(float(np.mean(tissue)), abs=1e-5)
    res = CliRunner().invoke(app, ["evaluate", str(ckpt), str(tmp_path / "nowhere")])
    assert res.exit_code != 0
