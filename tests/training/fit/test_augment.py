"""Augmentations move image, label and the not-annotated (255) region together."""

from __future__ import annotations

import numpy as np

from training.data.labels import IGNORE
from training.fit.augment import AugmentConfig, build_augmentations
from training.fit.sampling import PatchDataset, make_case

PATCH = (24, 24, 24)


def _volume():
    g = np.indices((40, 44, 36)).astype(np.float32)
    smooth = np.sin(g[0] / 5) + np.cos(g[1] / 7) + np.sin(g[2] / 4 + g[0] / 9)
    levels = np.floor((smooth + 3) * 1.5).astype(np.float32) + 1  # integer levels 1..9, never 0
    label = levels.astype(np.uint8)  # label = function of the image (identity on levels)
    label[label > 9] = 9
    levels = label.astype(np.float32)
    partial = label.copy()
    partial[:, :, ::4] = IGNORE  # not-annotated slabs
    partial[5:12, :, :] = IGNORE
    # channel 1 encodes the annotation mask in the image: 1 = annotated, 2 = not annotated
    mask_ch = np.where(partial == IGNORE, 2.0, 1.0).astype(np.float32)
    return np.stack([levels, mask_ch]), partial


def test_spatial_augmentation_keeps_image_label_and_ignore_region_aligned():
    image, partial = _volume()
    cfg = AugmentConfig(image_mode="nearest", p_affine=1.0, p_elastic=1.0, rotate_deg=30).without_intensity()
    ds = PatchDataset([make_case("a", image, partial)], PATCH, 12, build_augmentations(cfg, PATCH), seed=3)
    moved = 0
    for i in range(len(ds)):
        item = ds[i]
        img, lab = item["image"].numpy(), item["label"][0].numpy()
        assert img.shape == (2, *PATCH) and lab.shape == PATCH
        inside = img[1] != 0  # zero = padding brought in from outside: label must be 0 there
        np.testing.assert_array_equal(lab[~inside], 0)
        np.testing.assert_array_equal(lab[inside] == IGNORE, img[1][inside] == 2)  # 255 region = warped mask
        ann = inside & (lab != IGNORE)
        np.testing.assert_array_equal(lab[ann], img[0][ann].astype(np.uint8))  # label = f(warped image)
        assert set(np.unique(lab)) <= set(range(10)) | {IGNORE}
        moved += int(not np.array_equal(lab != IGNORE, (partial != IGNORE)[: PATCH[0], : PATCH[1], : PATCH[2]]))
    assert moved > 0


def test_default_augmentation_only_produces_existing_label_values():
    image, partial = _volume()
    cfg = AugmentConfig(p_affine=1.0, p_elastic=1.0, p_noise=1.0, p_smooth=1.0)
    ds = PatchDataset([make_case("a", image[:1], partial)], PATCH, 6, build_augmentations(cfg, PATCH), seed=4)
    for i in range(len(ds)):
        item = ds[i]
        vals = set(np.unique(item["label"].numpy()).tolist())
        assert vals <= set(range(10)) | {IGNORE}
        assert IGNORE in vals
        assert np.isfinite(item["image"].numpy()).all()


def test_same_seed_same_sample():
    image, partial = _volume()
    aug = build_augmentations(AugmentConfig(p_affine=1.0), PATCH)
    a = PatchDataset([make_case("a", image, partial)], PATCH, 4, aug, seed=7)
    b = PatchDataset([make_case("a", image, partial)], PATCH, 4, build_augmentations(AugmentConfig(p_affine=1.0),
                                                                                     PATCH), seed=7)
    for i in range(4):
        np.testing.assert_array_equal(a[i]["label"].numpy(), b[i]["label"].numpy())
        np.testing.assert_allclose(a[i]["image"].numpy(), b[i]["image"].numpy())
