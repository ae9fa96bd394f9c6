"""Patch sampling: patches hold annotation even with one annotated slice, and the slice moves."""

from __future__ import annotations

import numpy as np

from training.data.labels import IGNORE
from training.fit.augment import AugmentConfig, build_augmentations
from training.fit.sampling import PatchDataset, SamplingConfig, crop_padded, make_case, sample_patch_start

PATCH = (24, 24, 24)


def _one_slice_cases(n=3, shape=(40, 48, 44), seed=0):
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n):
        full = rng.integers(0, 10, shape).astype(np.uint8)
        partial = np.full(shape, IGNORE, np.uint8)
        z = int(rng.integers(8, shape[2] - 8))
        partial[:, :, z] = full[:, :, z]  # one annotated axial slice per volume
        img = rng.standard_normal((1, *shape)).astype(np.float32)
        cases.append(make_case(f"c{k}", img, partial, seed=k))
    return cases


def test_patches_contain_annotation_and_the_plane_moves():
    cases = _one_slice_cases()
    aug = build_augmentations(AugmentConfig(), PATCH)  # the training pipeline, spatial transforms included
    ds = PatchDataset(cases, PATCH, 120, aug, SamplingConfig(), seed=0)
    hits, planes = 0, set()
    for i in range(len(ds)):
        lab = ds[i]["label"][0].numpy()
        ann = lab != IGNORE
        if ann.any():
            hits += 1
            planes.add(int(np.argmax(ann.sum(axis=(0, 1)))))
    assert hits / len(ds) >= 0.95
    assert len(planes) >= PATCH[2] // 2  # the annotated plane sits at many depths of the patch


def test_start_keeps_sampled_voxel_inside_small_and_large_volumes():
    rng = np.random.default_rng(1)
    cfg = SamplingConfig()
    for shape in [(10, 30, 50), (24, 24, 24), (60, 16, 70)]:
        lab = np.full(shape, IGNORE, np.uint8)
        v = tuple(int(rng.integers(0, s)) for s in shape)
        lab[v] = 3
        case = make_case("x", np.zeros((1, *shape), np.float32), lab)
        for _ in range(50):
            s = sample_patch_start(shape, PATCH, case.candidates, rng, cfg)
            assert all(s[i] <= v[i] < s[i] + PATCH[i] for i in range(3))
            patch = crop_padded(lab, s, np.array(PATCH), 0)
            assert (patch == 3).sum() == 1 and set(np.unique(patch)) <= {0, 3, IGNORE}


def test_nothing_annotated_falls_back_to_uniform_crops():
    shape = (30, 30, 30)
    case = make_case("x", np.zeros((1, *shape), np.float32), np.full(shape, IGNORE, np.uint8))
    ds = PatchDataset([case], PATCH, 4, None, seed=0)
    assert ds[0]["label"].shape == (1, *PATCH) and ds[0]["image"].shape == (1, *PATCH)
