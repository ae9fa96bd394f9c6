"""The dataset reader pairs files by subject/session id and reports incomplete sessions."""

import numpy as np
import pytest

from training.data.dataset import DatasetError, index_dhcp, index_folder, open_dataset
from training.data.nifti import save_volume


def _write(path, value):
    save_volume(path, np.full((3, 3, 3), value, np.uint8), np.eye(4))


def _session(root, sub, ses, suffixes):
    anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
    for i, sfx in enumerate(suffixes):
        _write(anat / f"sub-{sub}_ses-{ses}_{sfx}.nii.gz", i)
    return anat


FULL = ["desc-restore_T2w", "T2w", "desc-restore_T1w", "T1w", "desc-drawem9_dseg", "desc-brain_mask"]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "dhcp"
    # ids whose sort order differs from the metadata order, so positional pairing would go wrong
    _session(root, "CC0003", "900", FULL)
    _session(root, "CC0001", "12", FULL)
    _session(root, "CC0001", "7", [s for s in FULL if s != "desc-drawem9_dseg"])
    _session(root, "CC0002", "50", ["desc-drawem9_dseg", "T1w"])  # no T2w: unusable
    (root / "participants.tsv").write_text(
        "participant_id\tsex\tbirth_age\nCC0003\tfemale\t40.1\nCC0001\tmale\t30.0\nCC0002\tmale\t38\n"
    )
    (root / "sub-CC0001" / "sub-CC0001_sessions.tsv").write_text("session_id\tscan_age\n7\t44.5\n12\t31.25\n")
    (root / "sub-CC0003" / "sub-CC0003_sessions.tsv").write_text("session_id\tscan_age\n900\t41.0\n")
    return root


def test_pairs_by_id_and_reads_metadata(tree):
    ds = index_dhcp(tree)
    assert ds.layout == "dhcp"
    assert ds.ids() == ["sub-CC0001_ses-12", "sub-CC0001_ses-7", "sub-CC0003_ses-900"]
    s = ds.get("sub-CC0001_ses-12")
    assert s.scan_age == 31.25 and s.sex == "male" and s.birth_age == 30.0
    assert ds.get("sub-CC0001_ses-7").scan_age == 44.5
    for subj in ds:
        for path in (subj.image, subj.t1w, subj.label, subj.brain_mask):
            if path is not None:
                assert path.name.startswith(f"sub-{subj.participant_id}_ses-{subj.session_id}_")
    assert s.image.name.endswith("desc-restore_T2w.nii.gz")  # restored preferred over raw
    assert s.t1w.name.endswith("desc-restore_T1w.nii.gz")


def test_reports_incomplete_sessions(tree):
    ds = index_dhcp(tree)
    inc = {i.id: i for i in ds.incomplete}
    assert set(inc) == {"sub-CC0001_ses-7", "sub-CC0002_ses-50"}
    assert inc["sub-CC0001_ses-7"].missing == ("label",) and inc["sub-CC0001_ses-7"].usable
    assert "T2w" in inc["sub-CC0002_ses-50"].missing and not inc["sub-CC0002_ses-50"].usable
    assert "scan_age" in inc["sub-CC0002_ses-50"].missing
    assert "sub-CC0002_ses-50" not in ds.ids()
    assert ds.get("sub-CC0001_ses-7").label is None
    assert [s.id for s in ds.with_labels()] == ["sub-CC0001_ses-12", "sub-CC0003_ses-900"]


def test_release2_names_are_accepted(tmp_path):
    _session(tmp_path, "A1", "1", ["T2w_restore", "T1w_restore", "drawem_tissue_labels", "brainmask_drawem"])
    s = index_dhcp(tmp_path).subjects[0]
    assert s.label.name.endswith("drawem_tissue_labels.nii.gz")
    assert s.image.name.endswith("T2w_restore.nii.gz") and s.brain_mask is not None


def test_unknown_id_and_bad_inputs_give_clear_errors(tree, tmp_path):
    ds = index_dhcp(tree)
    with pytest.raises(DatasetError, match="unknown subject"):
        ds.get("sub-NOPE_ses-1")
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset(tmp_path / "missing")
    (tree / "sub-CC0003" / "sub-CC0003_sessions.tsv").write_text("session_id\tage\n900\t41\n")
    with pytest.raises(DatasetError, match="scan_age"):
        index_dhcp(tree)
    (tree / "sub-CC0003" / "sub-CC0003_sessions.tsv").write_text("session_id\tscan_age\n900\tforty\n")
    with pytest.raises(DatasetError, match="not a number"):
        index_dhcp(tree)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no NIfTI"):
        open_dataset(empty)


def test_misplaced_file_is_refused(tree):
    wrong = tree / "sub-CC0003" / "ses-900" / "anat" / "sub-CC0001_ses-12_T2w.nii.gz"
    _write(wrong, 1)
    with pytest.raises(DatasetError, match="refusing to guess"):
        index_dhcp(tree)


def test_combined_tsv_supplies_scan_age(tmp_path):
    _session(tmp_path, "B2", "3", FULL)
    (tmp_path / "combined.tsv").write_text("participant_id\tsession_id\tscan_age\tsex\nsub-B2\tses-3\t36.5\tfemale\n")
    s = open_dataset(tmp_path).subjects[0]
    assert s.scan_age == 36.5 and s.sex == "female"
    assert open_dataset(tmp_path).incomplete == []


def test_plain_folder_with_monailabel_labels(tmp_path):
    _write(tmp_path / "b.nii.gz", 1)
    _write(tmp_path / "a.nii.gz", 1)
    _write(tmp_path / "labels" / "final" / "a.nii.gz", 2)
    (tmp_path / "notes.txt").write_text("x")
    ds = open_dataset(tmp_path)
    assert ds.layout == "folder" and ds.ids() == ["a", "b"]
    assert ds.get("a").label == tmp_path / "labels" / "final" / "a.nii.gz"
    assert ds.get("b").label is None
    assert [i.id for i in index_folder(tmp_path).incomplete] == ["b"]


def test_generated_study_set_passes_the_reader(synth_dataset):
    from training.data.labels import NUM_CLASSES
    from training.data.nifti import load_volume, read_header

    assert len(synth_dataset) == 6 and synth_dataset.incomplete == []
    ages = [s.scan_age for s in synth_dataset]
    assert all(26 <= a <= 45 for a in ages)
    for s in synth_dataset:
        shape, affine = read_header(s.image)
        lab = load_volume(s.label)
        assert lab.shape == shape and np.allclose(lab.affine, affine)
        assert set(np.unique(lab.data)) == set(range(NUM_CLASSES))
        assert s.t1w is not None and s.brain_mask is not None
