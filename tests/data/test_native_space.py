"""Back to each scan's own space: preprocessing, then the inverse writer, returns a label map voxel-identical."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from brainfm_lightning.data.geometry import resample_to_grid, scan_grid, to_reference_space, write_like
from brainfm_lightning.data.io import load_label, load_scan
from brainfm_lightning.data.preprocess import SessionPreprocessor, foreground, zscore


def _affine(kind: str) -> np.ndarray:
    affine = np.eye(4)
    if kind == "LPS":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    elif kind == "LAS":
        affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    elif kind == "oblique":  # a rotated acquisition: no axis is aligned with the scanner's
        affine[:3, :3] = Rotation.from_euler("xyz", [12, -8, 17], degrees=True).as_matrix()
    elif kind == "anisotropic":  # 3 mm slices
        affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [31.0, -17.0, 5.5]
    return affine


def _write_case(folder, kind: str, dtype) -> tuple:
    """A head-like scan and a two-label mask inside it, stored on the ``kind`` grid as ``dtype``."""
    shape = (36, 40, 32) if kind != "anisotropic" else (36, 40, 14)
    rng = np.random.default_rng(0)
    image = np.zeros(shape, np.float32)
    image[4:32, 5:35, 3:shape[2] - 2] = rng.uniform(100, 300, (28, 30, shape[2] - 5))
    label = np.zeros(shape, np.uint8)
    label[10:19, 12:24, 5:9] = 1
    label[22:26, 26:30, 6:10] = 2
    affine = _affine(kind)
    scan, mask = folder / f"{kind}_t1.nii.gz", folder / f"{kind}_seg.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(dtype), affine), scan)
    nib.save(nib.Nifti1Image(label.astype(dtype), affine), mask)
    return scan, mask, label


@pytest.mark.parametrize("kind", ["LPS", "LAS", "oblique", "anisotropic"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_label_map_survives_preprocessing_and_the_inverse_writer(tmp_path, kind, dtype):
    scan, mask, label = _write_case(tmp_path, kind, dtype)
    preprocessor = SessionPreprocessor(32, spacing=1.0)
    images, grid_label, grid_affine = preprocessor.to_grid({"T1": load_scan(scan)}, load_label(mask))
    assert nib.aff2axcodes(grid_affine) == ("R", "A", "S") or kind == "oblique"
    assert images.shape[1:] == grid_label.shape[1:]
    native = to_reference_space(grid_label.numpy(), grid_affine, scan)[0]
    written = nib.load(write_like(native, scan, tmp_path / "out" / "case_seg.nii.gz"))
    reference = nib.load(scan)
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    assert written.shape == reference.shape
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-6)
    for form in ("qform", "sform"):
        got, got_code = getattr(written.header, f"get_{form}")(coded=True)
        want, want_code = getattr(reference.header, f"get_{form}")(coded=True)
        assert got_code == want_code
        if want is not None:
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_voxels_outside_the_predicted_grid_are_background(tmp_path):
    scan, _, _ = _write_case(tmp_path, "LPS", np.float32)
    shape, affine = scan_grid(scan)
    small = np.ones((1, 4, 4, 4), np.uint8)  # a grid covering 4 mm^3 of the scan, shifted inside it
    inner = affine.copy()
    inner[:3, 3] = affine[:3, :3] @ np.array([10.0, 10.0, 10.0]) + affine[:3, 3]
    native = resample_to_grid(small, inner, shape, affine)[0]
    assert native.sum() == 64 and native[10:14, 10:14, 10:14].all()


def test_probability_maps_are_written_as_float_channels(tmp_path):
    scan, _, _ = _write_case(tmp_path, "LAS", np.int16)
    shape, _ = scan_grid(scan)
    maps = np.random.default_rng(1).random((2, *shape)).astype(np.float32)
    written = nib.load(write_like(maps, scan, tmp_path / "p.nii.gz", dtype=np.float32))
    assert written.shape == (*shape, 2)
    np.testing.assert_allclose(np.moveaxis(np.asarray(written.dataobj), -1, 0), maps, rtol=1e-6)


def test_write_like_names_a_shape_mismatch(tmp_path):
    scan, _, _ = _write_case(tmp_path, "LPS", np.float32)
    with pytest.raises(ValueError, match="does not match the reference"):
        write_like(np.zeros((3, 3, 3), np.uint8), scan, tmp_path / "bad.nii.gz")


@pytest.mark.parametrize("skull_stripped", [True, False])
def test_head_foreground_with_and_without_skull_stripping(skull_stripped):
    """Raw scans have a noisy background; "above the minimum" would take the whole field of view."""
    rng = np.random.default_rng(0)
    volume = np.zeros((40, 40, 40), np.float32) if skull_stripped else rng.rayleigh(20.0, (40, 40, 40))
    head = np.zeros((40, 40, 40), bool)
    head[8:32, 6:34, 10:30] = True
    volume[head] = rng.uniform(300, 600, head.sum())
    volume[18:22, 18:22, 18:22] = 5.0  # a dark ventricle inside: filled back in
    if not skull_stripped:
        volume[2, 2, 2] = 900.0  # a bright speck in the air (an artefact) is not part of the head
    mask = foreground(torch.from_numpy(volume.astype(np.float32))).numpy()
    if skull_stripped:  # the brain mask exactly: every voxel above the zero background, ventricle included
        np.testing.assert_array_equal(mask, head)
    else:  # the head, ventricle included, and at most a 2-voxel rim of air; never the whole field of view
        from scipy import ndimage

        assert mask[head].all() and not mask[~ndimage.binary_dilation(head, iterations=2)].any()
        assert mask.mean() < 0.5


def test_zscore_matches_float64_statistics_on_the_mask():
    rng = np.random.default_rng(2)
    volume = rng.normal(50, 7, (10, 11, 12)).astype(np.float32)
    mask = rng.random((10, 11, 12)) > 0.4
    selected = volume.astype(np.float64)[mask]
    expected = (volume.astype(np.float64) - selected.mean()) / selected.std()
    got = zscore(torch.from_numpy(volume), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not zscore(torch.full((3, 3, 3), 4.0), torch.ones(3, 3, 3, dtype=torch.bool)).any()
