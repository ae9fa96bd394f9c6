"""Pre-processing: RAS reorientation, head crop that keeps annotations, normalisation, exact restore."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from training.data.labels import IGNORE
from training.data.nifti import Volume, save_volume
from training.data.preprocess import PreprocessConfig, PreprocessError, preprocess, restore


def _head(shape, rng):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    r = np.sqrt((g**2).sum(0))
    img = np.where(r < 0.7, 100 + 20 * rng.standard_normal(shape), 0).astype(np.float32)
    lab = np.where(r < 0.7, 4, 0).astype(np.uint8)
    lab[r < 0.5] = 3
    lab[r < 0.3] = 5
    return img, lab


def _affine(codes, spacing=(1.5, 2.0, 2.5), perm=(0, 1, 2)):
    """Affine whose voxel axis i runs along world axis perm[i] with the sign implied by codes."""
    a = np.zeros((4, 4))
    a[3, 3] = 1
    for i, (p, c) in enumerate(zip(perm, codes, strict=True)):
        a[p, i] = spacing[i] * (1 if c in "RAS" else -1)
    a[:3, 3] = [10.0, -20.0, 5.0]
    return a


@pytest.mark.parametrize(
    "codes,perm",
    [("RAS", (0, 1, 2)), ("LPS", (0, 1, 2)), ("ASL", (1, 2, 0)), ("SLP", (2, 0, 1))],
)
def test_roundtrip_keeps_shape_affine_and_values(tmp_path, codes, perm):
    rng = np.random.default_rng(0)
    shape = (20, 26, 30)
    img, lab = _head(shape, rng)
    aff = _affine(codes, perm=perm)
    assert "".join(nib.aff2axcodes(aff)) == codes
    path = save_volume(tmp_path / "img.nii.gz", img, aff)
    lpath = save_volume(tmp_path / "lab.nii.gz", lab, aff, dtype=np.uint8)
    pp = preprocess([path], lpath, PreprocessConfig())
    assert "".join(nib.aff2axcodes(pp.meta.affine)) == "RAS"
    assert pp.image.shape[1:] == pp.label.shape == pp.meta.shape
    # processed-grid affine maps the same voxel to the same world point as the original
    assert pp.image.shape[1:] != shape or codes == "RAS"  # cropped (or at least reoriented)
    back = restore(pp.label, pp.meta)
    assert back.shape == shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, lab)  # crop only removed class-0 voxels
    assert np.allclose(pp.meta.original_affine, aff)
    probs = np.stack([pp.label == 3, pp.label == 5]).astype(np.float32)
    pb = restore(probs, pp.meta, fill=0.0)
    assert pb.shape == (2, *shape)
    np.testing.assert_array_equal(pb[1] > 0, lab == 5)
    # the processed grid's affine is exact: every processed voxel maps to the original voxel it came from
    vox = np.stack(np.meshgrid(*[np.arange(n) for n in pp.meta.shape], indexing="ij"), -1).reshape(-1, 3)
    m = np.linalg.inv(aff) @ pp.meta.affine
    orig = np.rint(vox @ m[:3, :3].T + m[:3, 3]).astype(int)
    np.testing.assert_array_equal(pp.label.reshape(-1), lab[tuple(orig.T)])
    assert abs(float(np.linalg.det(pp.meta.affine[:3, :3])) - float(abs(np.linalg.det(aff[:3, :3])))) < 1e-6


def test_normalisation_on_nonzero_voxels():
    rng = np.random.default_rng(1)
    img, _ = _head((24, 24, 24), rng)
    pp = preprocess([Volume(img, np.eye(4))], None, PreprocessConfig())
    x = pp.image[0]
    nz = x != 0
    assert abs(float(x[nz].mean())) < 1e-4 and abs(float(x[nz].std()) - 1) < 1e-3
    assert pp.label is None and pp.image.dtype == np.float32


def test_crop_never_cuts_annotated_voxels():
    rng = np.random.default_rng(2)
    img, lab = _head((30, 30, 30), rng)
    partial = np.full_like(lab, IGNORE)
    partial[:, :, 15] = lab[:, :, 15]
    partial[0, 0, 0] = 3  # an annotated (non-background) voxel far outside the head
    pp = preprocess([Volume(img, np.eye(4))], partial, PreprocessConfig(crop_margin_mm=0))
    assert pp.meta.crop_start == (0, 0, 0)
    back = restore(pp.label, pp.meta, fill=0)
    annotated_fg = (partial != IGNORE) & (partial != 0)
    np.testing.assert_array_equal(back[annotated_fg], partial[annotated_fg])
    assert set(np.unique(pp.label)) <= {0, 3, 4, 5, IGNORE}


def test_bad_inputs_raise_clear_errors():
    img = np.ones((10, 10, 10), np.float32)
    with pytest.raises(PreprocessError, match="expected 2 image"):
        preprocess([Volume(img, np.eye(4))], None, PreprocessConfig(modalities=("T2w", "T1w")))
    with pytest.raises(ValueError, match="shape"):
        preprocess([Volume(img, np.eye(4))], np.zeros((9, 10, 10), np.uint8), PreprocessConfig())
    with pytest.raises(ValueError, match="outside the drawem9"):
        preprocess([Volume(img, np.eye(4))], np.full((10, 10, 10), 17, np.uint8), PreprocessConfig())
    with pytest.raises(PreprocessError, match="differs"):
        preprocess([Volume(img, np.eye(4)), Volume(img[:9], np.eye(4))], None,
                   PreprocessConfig(modalities=("T2w", "T1w")))
