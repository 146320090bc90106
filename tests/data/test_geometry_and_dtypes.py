"""Scans as scanners and converters write them: any orientation, dtype and scaling; label masks rounded and checked."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from brainfm_lightning.data import Scan, ScanError, Session, SessionDataset, SessionPreprocessor
from brainfm_lightning.data.io import load_label, load_scan

# axis codes -> a 4x4 affine with 2 mm voxels whose axes point that way (R/L, A/P, S/I)
ORIENTATIONS = {
    "RAS": np.diag([2.0, 2.0, 2.0, 1.0]),
    "LPS": np.diag([-2.0, -2.0, 2.0, 1.0]),
    "LSA": np.array([[-2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]),
}


def ras_volume(shape=(12, 14, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32) * 100 + 1


def write_oriented(path, ras_data: np.ndarray, orientation: str, dtype=np.float32, slope: float = 1.0) -> None:
    """Store ``ras_data`` (indexed R, A, S) on the grid of ``orientation``, as ``dtype`` with a scale slope."""
    affine = ORIENTATIONS[orientation]
    to_ras = nib.orientations.io_orientation(affine)  # how this grid's axes map to RAS
    from_ras = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), to_ras)
    stored = nib.orientations.apply_orientation(ras_data, from_ras)
    image = nib.Nifti1Image((stored / slope).astype(dtype), affine)
    if slope != 1.0:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_any_orientation_and_dtype_loads_as_the_same_contiguous_ras_volume(tmp_path, orientation, dtype):
    expected = np.rint(ras_volume())
    path = tmp_path / f"scan-{orientation}.nii.gz"
    write_oriented(path, expected, orientation, dtype)
    data, affine = load_scan(path)
    assert data.dtype == np.float32 and data.flags.c_contiguous
    np.testing.assert_array_equal(data, expected)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    torch.from_numpy(data)  # a flipped view with negative strides would raise here


def test_scaled_int16_is_read_with_its_slope(tmp_path):
    expected = np.rint(ras_volume()) * 0.5
    write_oriented(tmp_path / "scaled.nii.gz", expected, "LPS", np.int16, slope=0.5)
    data, _ = load_scan(tmp_path / "scaled.nii.gz")
    np.testing.assert_allclose(data, expected)


def test_float32_lsa_session_goes_through_preprocessing(tmp_path):
    """The reported crash: float32 T1 volumes in LSA orientation failed in preprocessing on negative strides."""
    for name, seed in (("T1", 0), ("FLAIR", 1)):
        write_oriented(tmp_path / f"{name}.nii.gz", ras_volume(seed=seed), "LSA", np.float32)
    scans = [Scan(name, tmp_path / f"{name}.nii.gz") for name in ("T1", "FLAIR")]
    session = Session("sub-01", "ses-01", scans)
    sample = SessionDataset([session], SessionPreprocessor(8), policy="error")[0]
    assert sample["images"].shape == (2, 8, 8, 8) and torch.isfinite(sample["images"]).all()


def test_float_label_masks_are_rounded_not_truncated(tmp_path):
    mask = np.zeros((12, 14, 10), np.float32)
    mask[3:6, 4:8, 2:5] = 0.999  # a label after a float resampling or a float storage
    mask[7:9, 1:3, 6:8] = 2.0004
    write_oriented(tmp_path / "mask.nii.gz", mask, "LPS", np.float32)
    labels, _ = load_label(tmp_path / "mask.nii.gz")
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.rint(mask).astype(np.uint8))
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize("value, reason", [(0.5, "non-integer"), (-1.0, "range"), (300.0, "range")])
def test_bad_label_values_are_an_error_naming_the_file(tmp_path, value, reason):
    mask = np.zeros((12, 14, 10), np.float32)
    mask[2:4, 2:4, 2:4] = value
    path = tmp_path / "bad-mask.nii.gz"
    write_oriented(path, mask, "RAS", np.float32)
    with pytest.raises(ScanError, match=reason) as error:
        load_label(path)
    assert error.value.path == path
