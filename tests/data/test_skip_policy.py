"""The bad-scan policy of SessionDataset: skip and count, or stop naming the file; nothing non-finite gets out."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from brainfm_lightning.data import Scan, ScanError, Session, SessionDataset, SessionPreprocessor, pad_collate


@pytest.fixture
def scans(tmp_path, write_nifti) -> dict[str, Path]:
    nan = np.random.default_rng(2).random((16, 16, 16)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    return {
        "good_t1": write_nifti(tmp_path / "good_t1.nii.gz", seed=0),
        "good_t2": write_nifti(tmp_path / "good_t2.nii.gz", seed=1),
        "nan": write_nifti(tmp_path / "nan.nii.gz", data=nan),
        "constant": write_nifti(tmp_path / "constant.nii.gz", data=np.ones((16, 16, 16), np.float32)),
        "missing": tmp_path / "missing.nii.gz",
    }


def _dataset(sessions: list[Session], policy: str = "skip", with_label: bool = False) -> SessionDataset:
    return SessionDataset(sessions, SessionPreprocessor(16), policy=policy, with_label=with_label)


def test_skip_keeps_the_good_scan_and_counts_the_bad_one(scans, caplog):
    session = Session("a", "v1", [Scan("T1", scans["good_t1"]), Scan("FLAIR", scans["nan"])])
    dataset = _dataset([session])
    with caplog.at_level(logging.WARNING, logger="brainfm_lightning.data.dataset"):
        sample = dataset[0]
    assert sample["modalities"] == ["T1"]
    assert sample["images"].shape == (1, 16, 16, 16)
    assert sample["skipped_scans"] == 1
    assert (dataset.skipped_scans, dataset.skipped_sessions) == (1, 0)
    assert len(caplog.records) == 1 and str(scans["nan"]) in caplog.records[0].getMessage()


def test_a_session_of_bad_scans_only_is_none(scans):
    dataset = _dataset([Session("b", "v1", [Scan("T1", scans["constant"]), Scan("T2", scans["missing"])])])
    assert dataset[0] is None
    assert (dataset.skipped_scans, dataset.skipped_sessions) == (2, 1)


@pytest.mark.parametrize("bad", ["nan", "constant", "missing"])
def test_error_policy_raises_naming_the_file(scans, bad):
    dataset = _dataset([Session("c", "v1", [Scan("T1", scans["good_t1"]), Scan("T2", scans[bad])])], policy="error")
    with pytest.raises(ScanError) as error:
        dataset[(3, 0)]
    assert error.value.path == scans[bad]
    assert str(error.value).startswith(f"{scans[bad]}: ")


def test_a_bad_label_mask_drops_the_session_under_skip_and_raises_under_error(scans, tmp_path):
    broken = tmp_path / "broken_seg.nii.gz"
    broken.write_bytes(b"broken")
    session = Session("d", "v1", [Scan("T1", scans["good_t1"])], label_path=broken)
    skipping = _dataset([session], with_label=True)
    assert skipping[0] is None and skipping.skipped_sessions == 1
    with pytest.raises(ScanError, match="broken_seg.nii.gz: unreadable"):
        _dataset([session], policy="error", with_label=True)[0]


def test_no_nonfinite_value_reaches_a_batch(scans):
    sessions = [
        Session("a", "v1", [Scan("T1", scans["nan"]), Scan("T2", scans["good_t2"])]),
        Session("b", "v1", [Scan("T1", scans["good_t1"]), Scan("T2", scans["good_t2"])]),
        Session("c", "v1", [Scan("FLAIR", scans["nan"])]),
        Session("d", "v1", [Scan("T1", scans["good_t1"])]),
    ]
    loader = DataLoader(_dataset(sessions), batch_size=4, collate_fn=pad_collate)
    (batch,) = list(loader)
    assert torch.isfinite(batch["images"]).all()
    assert batch["session_ids"] == ["a/v1", "b/v1", "d/v1"]
    assert batch["modalities"] == [["T2", ""], ["T1", "T2"], ["T1", ""]]
    assert batch["present"].tolist() == [[True, False], [True, True], [True, False]]
    assert (batch["skipped_scans"], batch["skipped_sessions"]) == (1, 1)
    # the NaN scan's slot is padding (zeros), not the scan
    assert batch["images"][0, 1].abs().sum() == 0


def test_a_batch_of_dropped_sessions_is_none(scans):
    dataset = _dataset([Session("a", "v1", [Scan("T1", scans["nan"])])])
    assert pad_collate([dataset[0], None]) is None
