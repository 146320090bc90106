"""Folder-tree adapters: FOMO-60K and BIDS layouts become the same Session objects as a manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from brainfm_lightning.cli import main
from brainfm_lightning.data.adapters import SESSIONLESS, detect_layout, index_bids, index_dataset, index_fomo25
from brainfm_lightning.data.manifest import Problem


def _touch(root: Path, *names: str) -> None:
    """Empty placeholder files: indexing never opens them."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def _summary(sessions) -> list[tuple[str, list[str], str | None]]:
    return [(s.session_id, s.modalities, s.label_path.name if s.label_path else None) for s in sessions]


@pytest.fixture
def fomo_tree(tmp_path) -> Path:
    root = tmp_path / "fomo"
    _touch(root, "sub_1/ses_1/t1.nii.gz", "sub_1/ses_1/flair.nii.gz", "sub_1/ses_1/dwi_b1000.nii.gz",
           "sub_1/ses_1/seg.nii.gz", "sub_1/ses_1/brainmask.nii.gz", "sub_1/ses_1/t1_mask.nii.gz",
           "sub_1/ses_1/info.json", "sub_1/ses_1/.DS_Store",
           "sub_1/ses_2/t2.nii", "sub_1/ses_2/t2.nii.gz", "sub_1/ses_2/swi.mgz",
           "sub_10/ses_1/t1.nii.gz", "sub_2/ses_1/label.nii.gz", "sub_3/ses_1/pd.nii.gz", "README.md", "other/x.nii")
    return root


def test_fomo25_sessions_modalities_labels_and_exclusions(fomo_tree):
    problems: list[Problem] = []
    sessions = index_fomo25(fomo_tree, problems)
    assert _summary(sessions) == [
        ("sub_1/ses_1", ["dwi_b1000", "flair", "t1"], "seg.nii.gz"),
        ("sub_1/ses_2", ["t2"], None),
        ("sub_3/ses_1", ["pd"], None),
        ("sub_10/ses_1", ["t1"], None),  # natural order: sub_3 before sub_10
    ]
    assert sessions[0].scans[2].path == fomo_tree / "sub_1/ses_1/t1.nii.gz"
    assert sessions[1].scans[0].path.name == "t2.nii"  # t2.nii sorts before t2.nii.gz
    assert [str(p) for p in problems] == [
        f"{fomo_tree}/sub_1/ses_2/swi.mgz: unsupported extension (expected one of ('.nii', '.nii.gz')); not indexed",
        f"{fomo_tree}/sub_1/ses_2/t2.nii.gz: duplicate modality 't2' in session sub_1/ses_2; t2.nii is used and "
        "this file is ignored",
        f"{fomo_tree}/sub_2/ses_1: empty session sub_2/ses_1: no image file",
    ]


def test_without_a_problem_list_each_problem_is_a_warning(fomo_tree, caplog):
    with caplog.at_level(logging.WARNING, logger="brainfm_lightning.data.adapters"):
        assert len(index_fomo25(fomo_tree)) == 4
    assert [r.getMessage().split(": ")[0] for r in caplog.records] == [
        f"{fomo_tree}/sub_1/ses_2/swi.mgz", f"{fomo_tree}/sub_1/ses_2/t2.nii.gz", f"{fomo_tree}/sub_2/ses_1"]


@pytest.fixture
def bids_tree(tmp_path) -> Path:
    root = tmp_path / "bids"
    _touch(root, "dataset_description.json", "participants.tsv",
           "sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz", "sub-01/ses-01/anat/sub-01_ses-01_T1w.json",
           "sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz", "sub-01/ses-01/anat/sub-01_ses-01_label-lesion_roi.nii.gz",
           "sub-01/ses-01/anat/sub-01_ses-01_defacemask.nii.gz", "sub-01/ses-01/func/sub-01_ses-01_bold.nii.gz",
           "sub-01/ses-02/anat/sub-01_ses-02_T2w.nii", "sub-01/ses-03/dwi/sub-01_ses-03_dwi.nii.gz",
           "sub-02/anat/sub-02_run-2_T1w.nii.gz", "sub-02/anat/sub-02_run-10_T1w.nii.gz",
           "sub-02/anat/sub-02_acq-sag_T2starw.nii.gz", "sub-02/anat/sub-02_PDw.nii.gz",
           "derivatives/sub-01/anat/sub-01_desc-brain_T1w.nii.gz", "sourcedata/sub-01/x_T1w.nii.gz")
    return root


def test_bids_suffixes_sessions_and_sessionless_subjects(bids_tree, caplog):
    with caplog.at_level(logging.WARNING, logger="brainfm_lightning.data.adapters"):
        sessions = index_bids(bids_tree)
    assert _summary(sessions) == [
        ("sub-01/ses-01", ["FLAIR", "T1w"], "sub-01_ses-01_label-lesion_roi.nii.gz"),
        ("sub-01/ses-02", ["T2w"], None),  # ses-03 has no anat folder: not a session for us, not a problem
        (f"sub-02/{SESSIONLESS}", ["PDw", "T2starw", "T1w"], None),
    ]
    assert SESSIONLESS == "ses-1"
    assert sessions[2].scans[2].path == bids_tree / "sub-02/anat/sub-02_run-2_T1w.nii.gz"  # run-2 before run-10
    assert len(caplog.records) == 1
    warning = caplog.records[0].getMessage()
    assert warning.startswith(f"{bids_tree}/sub-02/anat/sub-02_run-10_T1w.nii.gz: duplicate modality 'T1w'")
    assert "sub-02_run-2_T1w.nii.gz is used" in warning


def test_bids_problems_name_the_files(bids_tree):
    _touch(bids_tree, "sub-03/anat/notbids.nii.gz", "sub-03/anat/sub-03_T1w.img")
    problems: list[Problem] = []
    assert len(index_bids(bids_tree, problems)) == 3
    assert [(p.path.name, p.reason.split(" (")[0].split(";")[0]) for p in problems] == [
        ("sub-02_run-10_T1w.nii.gz", "duplicate modality 'T1w' in session sub-02/ses-1"),
        ("notbids.nii.gz", "not a BIDS file name"),
        ("sub-03_T1w.img", "unsupported extension"),
        ("anat", "empty session sub-03/ses-1: no image file"),
    ]


def test_detect_layout(fomo_tree, bids_tree, tmp_path):
    (tmp_path / "m.csv").write_text("subject,session,modality,path\n")
    assert [detect_layout(p) for p in (fomo_tree, bids_tree, tmp_path / "m.csv")] == ["fomo25", "bids", "manifest"]
    with pytest.raises(ValueError, match="cannot tell the layout"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        detect_layout(tmp_path / "nowhere")


def test_index_dataset_rejects_missing_and_empty_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset root not found: {tmp_path / 'nowhere'}"):
        index_dataset(tmp_path / "nowhere", "fomo25")
    _touch(tmp_path, "sub_1/ses_1/seg.nii.gz")
    with pytest.raises(ValueError, match=f"no fomo25 sessions under {tmp_path}"):
        index_dataset(tmp_path, "fomo25")
    with pytest.raises(ValueError, match="unknown dataset layout 'nifti'"):
        index_dataset(tmp_path, "nifti")


def test_check_of_trees_finds_planted_problems_and_passes_clean_ones(tmp_path, write_nifti, capsys):
    fomo = tmp_path / "fomo"
    for subject in ("sub_1", "sub_2"):
        write_nifti(fomo / subject / "ses_1/t1.nii.gz")
        write_nifti(fomo / subject / "ses_1/flair.nii.gz", seed=1)
    bids = tmp_path / "bids"
    write_nifti(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    write_nifti(bids / "sub-01/anat/sub-01_dseg.nii.gz", data=np.zeros((16, 16, 16), np.float32))
    assert main(["data", "check", str(fomo)]) == 0
    assert capsys.readouterr().out == "checked 2 sessions, 4 scans and 0 label masks (fomo25 layout): 0 problem(s)\n"
    assert main(["data", "check", str(bids), "--layout", "bids"]) == 0
    assert capsys.readouterr().out == "checked 1 sessions, 1 scans and 1 label masks (bids layout): 0 problem(s)\n"

    (fomo / "sub_2/ses_1/flair.nii.gz").write_bytes(b"broken")
    write_nifti(fomo / "sub_2/ses_1/t2.nii.gz", spacing=(1.0, 1.0, 9.0))
    _touch(fomo, "sub_3/ses_1/seg.nii.gz")
    assert main(["data", "check", str(fomo), "--max-anisotropy", "4"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{fomo}/sub_3/ses_1: empty session sub_3/ses_1: no image file"
    assert out[1].startswith(f"{fomo}/sub_2/ses_1/flair.nii.gz: unreadable or truncated file")
    assert out[2] == f"{fomo}/sub_2/ses_1/t2.nii.gz: voxel spacing (1.0, 1.0, 9.0) mm is more anisotropic than 4.0:1"
    assert out[3] == "checked 2 sessions, 5 scans and 0 label masks (fomo25 layout): 3 problem(s)"
