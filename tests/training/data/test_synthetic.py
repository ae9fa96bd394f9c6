"""The synthetic dHCP-like generator: layout, anatomy, contrasts, determinism, difficulty, thick slices."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import spearmanr

from training.data.labels import BRAIN, NUM_CLASSES, TISSUE
from training.data.nifti import load_volume
from training.data.synthetic.acquisition import acquire_thick_slices, thick_slice_operator
from training.data.synthetic.params import SubjectParams, SyntheticError, draw_params, draw_study_params, subject_info
from training.data.synthetic.render import render_subject
from training.data.synthetic.write import (
    ACQUISITION_NOTE,
    IMAGE_SUFFIXES,
    generate_subject,
    iter_subjects,
    write_studies_folder,
    write_study_set,
)

SHAPE = (32, 40, 40)
SPACING = 3.4
N = 8
FINE = ((48, 64, 64), 2.25)  # same field of view as dHCP, fine enough to resolve the cortical ribbon
SUFFIXES = (*IMAGE_SUFFIXES, "desc-brain_mask", "desc-drawem9_dseg")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "set_a"
    anat_dirs = write_study_set(root, N, shape=SHAPE, spacing=SPACING, seed=3)
    return root, anat_dirs


def _read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _labels(anat_dirs):
    out = []
    for anat in anat_dirs:
        (path,) = anat.glob("*_desc-drawem9_dseg.nii.gz")
        out.append(load_volume(path).data)
    return out


def _all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(study):
    root, anat_dirs = study
    parts = _read_tsv(root / "participants.tsv")
    assert [r["participant_id"] for r in parts] == [f"SYN{k + 1:04d}" for k in range(N)]
    assert set(parts[0]) == {"participant_id", "sex", "birth_age"}
    assert len(anat_dirs) == N
    for k, (row, anat) in enumerate(zip(parts, anat_dirs, strict=True)):
        sub = f"sub-{row['participant_id']}"
        sessions = _read_tsv(root / sub / f"{sub}_sessions.tsv")
        assert len(sessions) == 1
        assert set(sessions[0]) == {"session_id", "scan_age", "scan_head_circumference"}
        ses = sessions[0]["session_id"]
        assert ses.isdigit()
        assert anat == root / sub / f"ses-{ses}" / "anat"
        for sfx in SUFFIXES:
            assert (anat / f"{sub}_ses-{ses}_{sfx}.nii.gz").is_file()
        age = float(sessions[0]["scan_age"])
        assert 26.0 <= age <= 45.5 and float(row["birth_age"]) <= age
        assert row["sex"] in ("male", "female")
        assert age == pytest.approx(subject_info(k, 3).scan_age)


def test_every_subject_has_all_classes_and_mask_matches(study):
    root, anat_dirs = study
    for anat in anat_dirs:
        lab = load_volume(next(anat.glob("*_desc-drawem9_dseg.nii.gz"))).data
        mask = load_volume(next(anat.glob("*_desc-brain_mask.nii.gz"))).data
        assert lab.dtype == np.uint8 and mask.dtype == np.uint8 and lab.shape == SHAPE
        counts = np.bincount(lab.ravel(), minlength=NUM_CLASSES)
        assert len(counts) == NUM_CLASSES and (counts > 0).all(), counts
        np.testing.assert_array_equal(mask, np.isin(lab, BRAIN).astype(np.uint8))


def test_ages_spread_and_head_grows_with_age(study):
    root, anat_dirs = study
    ages = [subject_info(k, 3).scan_age for k in range(N)]
    assert min(ages) < 37.0 and max(ages) > 40.0  # preterm and term subjects in any 8
    head = [int((lab != 0).sum()) for lab in _labels(anat_dirs)]
    assert spearmanr(ages, head).statistic > 0.8
    # the same individual (seed) at increasing ages: head and brain strictly grow
    subs = [generate_subject(a, 11, SHAPE, SPACING) for a in (27.0, 33.0, 40.0, 44.0)]
    head = [int((s.label != 0).sum()) for s in subs]
    brain = [int(s.brain_mask.sum()) for s in subs]
    assert head == sorted(head) and len(set(head)) == 4
    assert brain == sorted(brain) and len(set(brain)) == 4
    # ventricles are relatively larger in preterm brains
    vent = [(s.label == 5).sum() / s.brain_mask.sum() for s in subs]
    assert vent[0] > vent[-1]


def test_ras_affine_and_sagittal_axis(study):
    root, anat_dirs = study
    img = nib.load(next(anat_dirs[0].glob("*_desc-restore_T2w.nii.gz")))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.sqrt((img.affine[:3, :3] ** 2).sum(0)), [SPACING] * 3)
    np.testing.assert_allclose(img.affine @ ([(n - 1) / 2 for n in SHAPE] + [1]), [0, 0, 0, 1], atol=1e-4)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    # anatomy agrees with the axes: the brain is narrower left-right (axis 0) than front-back (axis 1),
    # the cerebellum lies posterior-inferior of the deep grey matter
    lab = load_volume(next(anat_dirs[0].glob("*_desc-drawem9_dseg.nii.gz"))).data
    idx = np.argwhere(np.isin(lab, BRAIN))
    extent = idx.max(0) - idx.min(0)
    assert extent[0] < extent[1]
    cb, dgm = np.argwhere(lab == 6).mean(0), np.argwhere(lab == 7).mean(0)
    assert cb[1] < dgm[1] and cb[2] < dgm[2]
    # left and right halves both hold hippocampus and deep grey matter (bilateral structures)
    mid = SHAPE[0] // 2
    for c in (7, 9):
        assert (lab[:mid] == c).any() and (lab[mid:] == c).any()


def test_same_seed_identical_files_different_seed_differs(study, tmp_path):
    root, _ = study
    again = tmp_path / "again"
    write_study_set(again, N, shape=SHAPE, spacing=SPACING, seed=3)
    a, b = _all_files(root), _all_files(again)
    assert a.keys() == b.keys() and len(a) == 1 + N * (1 + len(SUFFIXES))
    assert all(a[k] == b[k] for k in a)
    # subject k does not depend on how many subjects are written
    few = tmp_path / "few"
    write_study_set(few, 2, shape=SHAPE, spacing=SPACING, seed=3)
    for k, v in _all_files(few).items():
        if k.name != "participants.tsv":
            assert a[k] == v
    other = tmp_path / "other"
    write_study_set(other, 2, shape=SHAPE, spacing=SPACING, seed=4)
    lab_a = load_volume(next(root.rglob("sub-SYN0001_*_desc-drawem9_dseg.nii.gz"))).data
    lab_o = load_volume(next(other.rglob("sub-SYN0001_*_desc-drawem9_dseg.nii.gz"))).data
    assert not np.array_equal(lab_a, lab_o)
    s1 = generate_subject(40.0, 1, SHAPE, SPACING)
    s2 = generate_subject(40.0, 2, SHAPE, SPACING)
    assert not np.array_equal(s1.t2w, s2.t2w)


def _class_mean(img, lab, c):
    return float(img[lab == c].mean())


@pytest.mark.parametrize("age", [30.0, 41.0])
def test_neonatal_contrasts_t1_inverted(age):
    s = generate_subject(age, 5, *FINE)
    for img in (s.t2w, s.t1w, s.t2w_raw, s.t1w_raw):
        assert img.dtype == np.float32 and np.isfinite(img).all() and img.shape == s.label.shape
    t2 = {c: _class_mean(s.t2w, s.label, c) for c in range(NUM_CLASSES)}
    t1 = {c: _class_mean(s.t1w, s.label, c) for c in range(NUM_CLASSES)}
    # T2: fluid brightest, unmyelinated WM brighter than cortex and deep GM; T1 the other way round
    assert t2[5] > t2[3] > t2[7] and t2[1] > t2[3] > t2[2] and t2[0] < t2[2]
    assert t1[5] < t1[3] < t1[7] and t1[1] < t1[3] < t1[2]


def test_raw_images_carry_a_strong_bias_field():
    s = generate_subject(40.0, 6, *FINE)
    head = s.label != 0
    ratio = np.log(s.t2w_raw[head] / np.maximum(s.t2w[head], 1e-3))
    assert ratio.std() > 0.15  # raw / restore is a strong smooth field
    wm = s.label == 3
    cv = lambda a: a[wm].std() / a[wm].mean()  # noqa: E731
    assert cv(s.t2w_raw) > 1.3 * cv(s.t2w)


def _gaussian_bayes_balanced_accuracy(x, y, classes):
    """Best-case intensity-only classifier: a full-covariance Gaussian per class fitted on the same
    voxels it is scored on, equal priors; returns balanced accuracy."""
    scores = []
    for c in classes:
        xc = x[y == c]
        mu = xc.mean(0)
        cov = np.cov(xc.T) + 1e-6 * np.eye(x.shape[1])
        inv = np.linalg.inv(cov)
        d = x - mu
        scores.append(-0.5 * np.einsum("ij,jk,ik->i", d, inv, d) - 0.5 * np.log(np.linalg.det(cov)))
    pred = np.asarray(classes)[np.argmax(scores, axis=0)]
    return float(np.mean([(pred[y == c] == c).mean() for c in classes]))


@pytest.mark.parametrize("age", [29.0, 40.0])
def test_intensity_alone_cannot_separate_the_classes(age):
    s = generate_subject(age, 7, *FINE)
    tissue = np.isin(s.label, TISSUE)
    x = np.stack([s.t2w[tissue], s.t1w[tissue]], axis=1).astype(np.float64)
    y = s.label[tissue]
    bacc = _gaussian_bayes_balanced_accuracy(x, y, list(TISSUE))
    assert 0.2 < bacc < 0.85, bacc
    # all ten classes, the two backgrounds included, are not separable either
    allx = np.stack([s.t2w.ravel(), s.t1w.ravel()], axis=1).astype(np.float64)
    assert _gaussian_bayes_balanced_accuracy(allx, s.label.ravel(), list(range(NUM_CLASSES))) < 0.85


def test_studies_folder_matches_study_set(study, tmp_path):
    root, anat_dirs = study
    ids = write_studies_folder(tmp_path / "studies", 3, shape=SHAPE, spacing=SPACING, seed=3)
    assert ids == [subject_info(k, 3).image_id for k in range(3)] and ids[0] == "sub-SYN0001_ses-1001"
    for k, i in enumerate(ids):
        img = load_volume(tmp_path / "studies" / f"{i}.nii.gz")
        lab = load_volume(tmp_path / "studies" / "labels" / "final" / f"{i}.nii.gz")
        ref = load_volume(anat_dirs[k] / f"{i}_desc-restore_T2w.nii.gz")
        np.testing.assert_array_equal(img.data, ref.data)
        np.testing.assert_array_equal(lab.data, _labels([anat_dirs[k]])[0])
        np.testing.assert_allclose(img.affine, lab.affine)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subjects": 0},
        {"subjects": 2.5},
        {"shape": (32, 40)},
        {"shape": (4, 40, 40)},
        {"spacing": -1.0},
        {"spacing": float("nan")},
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs):
    args = {"subjects": 2, "shape": SHAPE, "spacing": SPACING, "seed": 0} | kwargs
    out = tmp_path / "out"
    with pytest.raises(SyntheticError):
        write_study_set(out, **args)
    with pytest.raises(ValueError):
        write_studies_folder(out, **args)
    assert not out.exists()


def test_bad_age_raises():
    with pytest.raises(SyntheticError, match="scan_age"):
        generate_subject(60.0, 0, SHAPE, SPACING)
    with pytest.raises(SyntheticError):
        generate_subject("old", 0, SHAPE, SPACING)


def test_cli_synth(tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.commands.synth import synth

    app = typer.Typer()
    app.command()(synth)
    out = tmp_path / "cli"
    args = [str(out), "--subjects", "2", "--shape", "32", "40", "40", "--spacing", "3.4", "--seed", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "voxel fractions" in res.output and "scan age" in res.output
    assert len(list(out.rglob("*_desc-drawem9_dseg.nii.gz"))) == 2
    res = CliRunner().invoke(app, [str(tmp_path / "bad"), "--subjects", "0"])
    assert res.exit_code != 0 and not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------
# params → render: the random draw and the deterministic rendering are separate steps

_IMAGES = ("t2w", "t1w", "t2w_raw", "t1w_raw")


def _assert_same_subject(a, b):
    for name in (*_IMAGES, "label", "brain_mask", "affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.scan_age, a.head_circumference, a.spacing, a.params) == (
        b.scan_age,
        b.head_circumference,
        b.spacing,
        b.params,
    )


def test_render_of_drawn_params_is_generate_subject_and_deterministic():
    params = draw_params(11, 33.0, SHAPE, SPACING)
    assert isinstance(params, SubjectParams) and params.shape == SHAPE and params.spacing == SPACING
    a = render_subject(params)
    _assert_same_subject(a, generate_subject(33.0, 11, SHAPE, SPACING))
    _assert_same_subject(a, render_subject(params))  # rendering draws nothing of its own
    # a generator works like its seed; subjects of a study set are their drawn params rendered
    _assert_same_subject(a, render_subject(draw_params(np.random.default_rng(11), 33.0, SHAPE, SPACING)))
    (info0, subj0), _ = list(iter_subjects(2, SHAPE, SPACING, seed=3))
    info, p0 = draw_study_params(0, 3, SHAPE, SPACING)
    assert info == info0
    _assert_same_subject(subj0, render_subject(p0))


def test_params_same_seed_equal_different_seed_differs_and_frozen():
    a, b = draw_params(1, 40.0, SHAPE, SPACING), draw_params(1, 40.0, SHAPE, SPACING)
    assert a == b and a is not b
    c = draw_params(2, 40.0, SHAPE, SPACING)
    assert a != c
    assert a.wave_dirs.shape == (7, 3) and not np.array_equal(a.wave_dirs, c.wave_dirs)
    assert a.size_jitter != c.size_jitter and a.scanner_state != c.scanner_state
    assert a.elastic[0] != c.elastic[0]
    # the same individual at another age: same draws, another age
    older = draw_params(1, 44.0, SHAPE, SPACING)
    assert older != a and older.wave_dirs.tobytes() == a.wave_dirs.tobytes()
    assert older.scanner_state == a.scanner_state
    with pytest.raises(AttributeError):
        a.scan_age = 30.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        a.wave_dirs[0, 0] = 0.0
    with pytest.raises(SyntheticError, match="scan_age"):
        draw_params(0, 60.0, SHAPE, SPACING)


# --------------------------------------------------------------------------------------------
# thick-slice acquisition


def _roughness(img, axis):
    """Mean absolute second difference along ``axis`` (high-frequency energy)."""
    return float(np.abs(np.diff(img, n=2, axis=axis)).mean())


@pytest.mark.parametrize("axis,voxel_axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_thick_slices_blur_along_the_chosen_axis_only(axis, voxel_axis):
    iso = generate_subject(40.0, 5, SHAPE, SPACING)
    thick = generate_subject(40.0, 5, SHAPE, SPACING, acquisition_axis=axis, slice_thickness_factor=2.0)
    np.testing.assert_array_equal(thick.label, iso.label)  # labels stay the high-resolution truth
    np.testing.assert_array_equal(thick.brain_mask, iso.brain_mask)
    np.testing.assert_array_equal(thick.affine, iso.affine)
    others = [a for a in range(3) if a != voxel_axis]
    for name in _IMAGES:
        img = getattr(thick, name)
        assert img.dtype == np.float32 and img.shape == SHAPE and np.isfinite(img).all()
        along = _roughness(img, voxel_axis)
        assert all(along < 0.7 * _roughness(img, a) for a in others), name
        assert along < 0.7 * _roughness(getattr(iso, name), voxel_axis), name
    assert thick.params["acquisition"]["axis"] == axis
    assert thick.params["acquisition"]["voxel_axis"] == voxel_axis
    assert "acquisition" not in iso.params


def test_thick_slice_axis_comes_from_the_affine():
    iso = generate_subject(40.0, 5, SHAPE, SPACING)
    # the same scan stored with voxel axes 0 and 1 swapped: coronal is now voxel axis 0
    perm = (1, 0, 2)
    swapped = type(iso)(
        **{
            **{k: getattr(iso, k) for k in ("scan_age", "head_circumference", "spacing", "params")},
            **{k: np.ascontiguousarray(getattr(iso, k).transpose(perm)) for k in (*_IMAGES, "label", "brain_mask")},
            "affine": iso.affine[:, [1, 0, 2, 3]],
        }
    )
    assert nib.aff2axcodes(swapped.affine) == ("A", "R", "S")
    a = acquire_thick_slices(iso, "coronal", 2.0)
    b = acquire_thick_slices(swapped, "coronal", 2.0)
    assert b.params["acquisition"]["voxel_axis"] == 0
    np.testing.assert_allclose(b.t2w, a.t2w.transpose(perm), rtol=1e-5, atol=1e-3)


def test_thick_slice_operator_keeps_constants_and_averages_blocks():
    for n, f in ((40, 2.0), (7, 2.0), (32, 2.5), (10, 3.0)):
        op = thick_slice_operator(n, f).toarray()
        assert op.shape == (n, n) and (op >= 0).all()
        np.testing.assert_allclose(op.sum(1), 1.0, atol=1e-6)
    # a pattern alternating every voxel is averaged out by 2-voxel slices
    x = np.tile([0.0, 1.0], 10)
    np.testing.assert_allclose(thick_slice_operator(20, 2.0) @ x, 0.5, atol=1e-6)


def test_thick_study_set_notes_how_it_was_made_default_unchanged(study, tmp_path):
    root, _ = study
    assert not (root / ACQUISITION_NOTE).exists()
    iso = tmp_path / "iso"
    write_study_set(iso, 2, shape=SHAPE, spacing=SPACING, seed=3, acquisition_axis=None)
    few = _all_files(iso)
    assert all(few[k] == v for k, v in _all_files(root).items() if k in few and k.name != "participants.tsv")
    thick = tmp_path / "thick"
    write_study_set(thick, 2, shape=SHAPE, spacing=SPACING, seed=3, acquisition_axis="axial", slice_thickness_factor=3)
    note = json.loads((thick / ACQUISITION_NOTE).read_text())
    acq = note["acquisition"]
    assert (acq["axis"], acq["voxel_axis"], acq["slice_thickness_factor"]) == ("axial", 2, 3.0)
    assert acq["slice_thickness_mm"] == pytest.approx(3 * SPACING) and note["seed"] == 3
    a, t = _all_files(iso), _all_files(thick)
    for k, v in a.items():
        same = k.name.endswith(("_dseg.nii.gz", "_mask.nii.gz", ".tsv"))
        assert (t[k] == v) == same, k
    ids = write_studies_folder(tmp_path / "studies", 1, shape=SHAPE, spacing=SPACING, seed=3, acquisition_axis="axial")
    assert (tmp_path / "studies" / ACQUISITION_NOTE).is_file()
    ref = load_volume(next(thick.rglob(f"{ids[0]}_desc-restore_T2w.nii.gz"))).data
    img = load_volume(tmp_path / "studies" / f"{ids[0]}.nii.gz").data
    assert not np.array_equal(img, ref)  # factor 2 (default) vs 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"acquisition_axis": "oblique"},
        {"acquisition_axis": "axial", "slice_thickness_factor": 1.0},
        {"acquisition_axis": "axial", "slice_thickness_factor": float("nan")},
        {"acquisition_axis": "axial", "slice_thickness_factor": "thick"},
        {"acquisition_axis": "axial", "slice_thickness_factor": 30.0},
    ],
)
def test_bad_acquisition_raises_and_writes_nothing(tmp_path, kwargs):
    out = tmp_path / "out"
    with pytest.raises(SyntheticError):
        write_study_set(out, 2, shape=SHAPE, spacing=SPACING, **kwargs)
    with pytest.raises(SyntheticError):
        write_studies_folder(out, 2, shape=SHAPE, spacing=SPACING, **kwargs)
    assert not out.exists()
    with pytest.raises(SyntheticError):
        generate_subject(40.0, 0, SHAPE, SPACING, **kwargs)


def test_cli_synth_thick_slices(tmp_path):
    import typer
    from typer.testing import CliRunner

    from apps.commands.synth import synth

    app = typer.Typer()
    app.command()(synth)
    out = tmp_path / "cli"
    base = [str(out), "--subjects", "1", "--shape", "32", "40", "40", "--spacing", "3.4", "--seed", "1"]
    res = CliRunner().invoke(app, [*base, "--thick-axis", "sagittal", "--thick-factor", "2.5"])
    assert res.exit_code == 0, res.output
    assert "thick slices" in res.output
    acq = json.loads((out / ACQUISITION_NOTE).read_text())["acquisition"]
    assert (acq["axis"], acq["slice_thickness_factor"]) == ("sagittal", 2.5)
    for bad in (["--thick-axis", "oblique"], ["--thick-factor", "3"]):
        res = CliRunner().invoke(app, [str(tmp_path / "bad"), "--subjects", "1", *bad])
        assert res.exit_code != 0 and not (tmp_path / "bad").exists(), bad
