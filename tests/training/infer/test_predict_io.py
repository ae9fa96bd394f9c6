"""Predictor end to end: any orientation in, the input's shape and affine out; edge cases; files; CLI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from training.data.nifti import Volume, load_volume, save_volume
from training.data.preprocess import PreprocessConfig
from training.data.synthetic.write import generate_subject
from training.infer.predictor import PredictError, Predictor
from training.model.checkpoint import save_checkpoint
from training.model.network import build_network, network_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = network_config("tiny")
    return build_network(cfg).eval(), cfg


@pytest.fixture(scope="module")
def subject():
    return generate_subject(40.0, seed=3, shape=(30, 36, 34), spacing=3.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny):
    model, cfg = tiny
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        path, model, network=cfg, preprocess=PreprocessConfig(), train_config={}, epoch=1, metrics={}
    )
    return path


def _reoriented(
    vol: Volume, codes: tuple[str, str, str], perm_first: bool = False
) -> tuple[Volume, np.ndarray]:
    """The same physical image stored with other voxel axes; returns it and the orientation transform."""
    start = nib.orientations.io_orientation(vol.affine)
    ornt = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(codes))
    data = nib.orientations.apply_orientation(vol.data, ornt)
    affine = vol.affine @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    return Volume(np.ascontiguousarray(data), affine), ornt


@pytest.mark.parametrize("codes", [("R", "A", "S"), ("L", "P", "S"), ("A", "S", "L"), ("I", "R", "P")])
def test_any_orientation_keeps_shape_affine_and_anatomy(tiny, subject, codes):
    model, cfg = tiny
    p = Predictor(model, cfg, PreprocessConfig(), device="cpu")
    base = Volume(subject.t2w, subject.affine)
    ref_label, ref_aff = p.predict([base])
    vol, ornt = _reoriented(base, codes)
    label, affine = p.predict([vol])
    assert label.shape == vol.data.shape and label.dtype == np.uint8
    np.testing.assert_allclose(affine, vol.affine)
    assert nib.aff2axcodes(affine) == codes
    # back in the original voxel order it is the same segmentation (the network saw the same RAS array)
    back = nib.orientations.apply_orientation(
        label,
        nib.orientations.ornt_transform(
            nib.orientations.io_orientation(vol.affine), nib.orientations.io_orientation(base.affine)
        ),
    )
    np.testing.assert_array_equal(back, ref_label)


def test_all_zero_image_gives_background(tiny):
    model, cfg = tiny
    vol = Volume(np.zeros((20, 24, 28), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    for fast in (True, False):
        label, affine = Predictor(model, cfg, PreprocessConfig(), device="cpu", fast=fast).predict([vol])
        assert label.shape == (20, 24, 28)
        assert not label.any()
    probs, _ = Predictor(model, cfg, PreprocessConfig(), device="cpu").predict_probabilities([vol])
    assert np.allclose(probs[0], 1.0, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_volume_smaller_than_window(tiny, fast):
    model, cfg = tiny
    rng = np.random.default_rng(0)
    vol = Volume(rng.random((10, 12, 9)).astype(np.float32) + 1, np.diag([-1.0, 1.5, 1.0, 1.0]))
    p = Predictor(model, cfg, PreprocessConfig(), device="cpu", fast=fast)
    label, affine = p.predict([vol])
    assert label.shape == (10, 12, 9)
    np.testing.assert_allclose(affine, vol.affine)
    probs, _ = p.predict_probabilities([vol])
    assert probs.shape == (10, 10, 12, 9)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), label)


def test_head_crop_pastes_background_outside(tiny, subject):
    """Air around the head is not run through the network and comes out as class 0."""
    model, cfg = tiny
    p = Predictor(model, cfg, PreprocessConfig(), device="cpu", precision="fp32")
    pad = 24  # 72 mm: more than the margin plus the widening retries (random weights trigger them)
    # noisy air like the scanner's (non-zero, so preprocess's non-zero crop keeps it all)
    air = subject.t2w[subject.label == 0]
    rng = np.random.default_rng(0)
    big = rng.choice(air, size=tuple(s + 2 * pad for s in subject.t2w.shape)).astype(np.float32)
    big[pad:-pad, pad:-pad, pad:-pad] = subject.t2w
    aff = subject.affine.copy()
    aff[:3, 3] -= aff[:3, :3] @ np.full(3, pad)
    label, _ = p.predict([Volume(big, aff)])
    assert label.shape == big.shape
    assert p.last_stats.extra["preprocessed_shape"] == list(big.shape)
    box = p.last_stats.extra["head_box"]  # RAS grid = voxel grid here (the synthetic affine is RAS)
    assert all(b[0] > 0 and b[1] < s for b, s in zip(box, big.shape, strict=True))
    inside = np.zeros(big.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert not label[~inside].any()
    assert p.last_stats.roi_size[0] < big.shape[0] + 32  # the network saw the box, not the whole volume


def test_predict_file_and_checkpoint(tmp_path, ckpt, subject):
    img = save_volume(tmp_path / "t2.nii.gz", subject.t2w, subject.affine)
    p = Predictor.from_checkpoint(ckpt, device="cpu")
    out = p.predict_file([img], tmp_path / "seg.nii.gz", probabilities_path=tmp_path / "prob.nii.gz")
    seg, prob = load_volume(out), load_volume_4d(tmp_path / "prob.nii.gz")
    assert seg.data.shape == subject.t2w.shape and seg.data.dtype == np.uint8
    np.testing.assert_allclose(seg.affine, subject.affine, atol=1e-5)
    assert prob.shape == (*subject.t2w.shape, 10)
    np.testing.assert_array_equal(prob.argmax(-1), seg.data)


def load_volume_4d(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_wrong_inputs_raise(tiny, subject, tmp_path):
    model, cfg = tiny
    p = Predictor(model, cfg, PreprocessConfig(), device="cpu")
    vol = Volume(subject.t2w, subject.affine)
    with pytest.raises(PredictError):
        p.predict([vol, vol])  # the model has one input channel
    with pytest.raises(PredictError):
        p.predict([])
    with pytest.raises(ValueError):
        p.predict([tmp_path / "missing.nii.gz"])
    with pytest.raises(PredictError):
        Predictor(model, cfg, PreprocessConfig(), device="cpu", threads=0)


def test_infer_cli(tmp_path, ckpt, subject):
    from typer.testing import CliRunner

    from apps.cli import app

    img = save_volume(tmp_path / "t2.nii.gz", subject.t2w, subject.affine)
    out = tmp_path / "seg.nii.gz"
    res = CliRunner().invoke(
        app,
        [
            "infer",
            str(ckpt),
            str(img),
            str(out),
            "--probabilities",
            str(tmp_path / "p.nii.gz"),
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    seg = load_volume(out)
    assert seg.data.shape == subject.t2w.shape
    np.testing.assert_allclose(seg.affine, subject.affine, atol=1e-5)
    assert (tmp_path / "p.nii.gz").is_file()
    res = CliRunner().invoke(app, ["infer", str(ckpt), str(img), str(out), "--t1w", str(img)])
    assert res.exit_code != 0 and "--t1w" in res.output
    res = CliRunner().invoke(app, ["infer", str(tmp_path / "nope.pt"), str(img), str(out)])
    assert res.exit_code != 0 and "not found" in res.output
