"""SegmentationWriter: masks on each reference scan's own grid, small predicted lesions cleared when asked."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from brainfm_lightning.callbacks.prediction_writer import SegmentationWriter


def _write(writer: SegmentationWriter, labels: np.ndarray, reference, tmp_path) -> np.ndarray:
    prediction = {"session_ids": ["pat-1_visit-1"], "modalities": [["FLAIR"]],
                  "prediction": torch.from_numpy(labels)[None, None], "affines": [nib.load(reference).affine],
                  "references": [str(reference)]}
    writer.write_on_batch_end(None, None, prediction, None, None, 0, 0)
    written = nib.load(writer.written[-1])
    assert written.shape == labels.shape and np.allclose(written.affine, nib.load(reference).affine)
    return np.asarray(written.dataobj)


def test_min_lesion_ml_clears_specks_measured_on_the_anisotropic_reference_grid(tmp_path):
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])  # stored LPS, 1 x 1 x 3 mm voxels (0.003 ml)
    reference = tmp_path / "flair_lps.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), affine), reference)
    labels = np.zeros((16, 16, 8), np.uint8)
    labels[4:8, 4:8, 2:4] = 1  # 32 voxels: 0.096 ml
    labels[12, 12, 6] = labels[13, 13, 6] = 1  # 2 voxels (26-connected): 0.006 ml
    everything = _write(SegmentationWriter(output_dir=str(tmp_path / "all")), labels, reference, tmp_path)
    np.testing.assert_array_equal(everything, labels)
    kept = _write(SegmentationWriter(output_dir=str(tmp_path / "big"), min_lesion_ml=0.01), labels, reference,
                  tmp_path)
    expected = labels.copy()
    expected[12:14, 12:14, 6] = 0
    np.testing.assert_array_equal(kept, expected)
    with pytest.raises(ValueError, match="-1"):
        SegmentationWriter(min_lesion_ml=-1.0)
