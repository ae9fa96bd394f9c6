"""Metrics against independent computations, absent-class conventions, and `neolabel evaluate --json`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.data import labels as L
from training.evaluate.segmentation import EvaluationError, dice_per_class, evaluate_arrays, hd95_per_class, tissue_mean


def _label(shape=(24, 26, 22), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[3:21, 3:23, 3:19] = 4
    for c in (1, 2, 3, 5, 6):
        lo = rng.integers(4, 10, 3)
        size = rng.integers(4, 9, 3)
        lab[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = c
    return lab


def test_identical_labels():
    lab = _label()
    d = dice_per_class(lab, lab)
    h = hd95_per_class(lab, lab, (0.5, 0.5, 0.5))
    present = set(np.unique(lab).tolist())
    for c in range(L.NUM_CLASSES):
        if c in present:
            assert d[c] == 1.0 and h[c] == 0.0
        else:
            assert math.isnan(d[c]) and math.isnan(h[c])


def test_known_overlap_dice():
    a = np.zeros((20, 20, 20), np.uint8)
    b = np.zeros_like(a)
    a[2:12, 2:12, 2:12] = 3  # 1000 voxels
    b[4:14, 2:12, 2:12] = 3  # shifted by 2: overlap 8·10·10
    expected = 2 * 800 / (1000 + 1000)
    assert dice_per_class(a, b)[3] == pytest.approx(expected)
    # random labels: compare with a direct per-class count
    rng = np.random.default_rng(1)
    p, r = rng.integers(0, 10, (9, 8, 7)), rng.integers(0, 10, (9, 8, 7))
    d = dice_per_class(p, r)
    for c in range(10):
        inter = np.logical_and(p == c, r == c).sum()
        assert d[c] == pytest.approx(2 * inter / ((p == c).sum() + (r == c).sum()))


def test_absent_class_conventions():
    p = np.zeros((6, 6, 6), np.uint8)
    r = np.zeros_like(p)
    r[1:3, 1:3, 1:3] = 5  # class 5 only in the reference
    d = dice_per_class(p, r)
    h = hd95_per_class(p, r, (1, 1, 1))
    assert d[5] == 0.0 and math.isnan(h[5])
    assert math.isnan(d[7]) and dice_per_class(p, r, empty=1.0)[7] == 1.0
    assert tissue_mean({c: (math.nan if c == 5 else 0.5) for c in range(10)}) == pytest.approx(0.5)
    assert tissue_mean({0: 1.0, 4: 1.0, 3: 0.25}) == pytest.approx(0.25)  # backgrounds never count


def test_partial_reference_counts_annotated_only():
    p = _label()
    r = p.copy()
    r[:, :, :10] = L.IGNORE
    p2 = p.copy()
    p2[:, :, :10] = 0  # wrong only where nothing is annotated
    assert all(v == 1.0 or math.isnan(v) for v in dice_per_class(p2, r).values())
    with pytest.raises(EvaluationError):
        hd95_per_class(p2, r, (1, 1, 1))
    m = evaluate_arrays("x", p2, r, (1, 1, 1))
    assert all(math.isnan(v) for v in m.hd95.values())


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Independent HD95: surface voxels by 6-neighbourhood, all pairwise distances."""

    def surface(m):
        pad = np.pad(m, 1)
        core = pad[1:-1, 1:-1, 1:-1]
        inner = core.copy()
        for ax in range(3):
            for sh in (-1, 1):
                inner &= np.roll(pad, sh, axis=ax)[1:-1, 1:-1, 1:-1]
        return np.argwhere(core & ~inner) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 0.8, 1.2)])
def test_hd95_against_independent_computations(spacing):
    from monai.metrics import compute_hausdorff_distance

    a = np.zeros((16, 18, 14), np.uint8)
    b = np.zeros_like(a)
    a[3:10, 4:12, 3:9] = 2
    b[5:12, 4:14, 2:9] = 2
    a[11:14, 2:5, 9:12] = 6
    b[11:15, 2:5, 9:12] = 6
    h = hd95_per_class(a, b, spacing)
    for c in (2, 6):
        assert h[c] == pytest.approx(_brute_hd95(a == c, b == c, spacing), abs=1e-6)
        monai = compute_hausdorff_distance(
            (a == c)[None, None],
            (b == c)[None, None],
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        )
        assert h[c] == pytest.approx(float(monai.ravel()[0]), abs=1e-4)


def test_shape_mismatch_raises():
    with pytest.raises(EvaluationError):
        dice_per_class(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


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
