"""Test metrics in each case's native space: the prediction mapped back onto the original mask file's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brainfm_lightning.data.geometry import resample_to_grid
from brainfm_lightning.data.io import load_label
from brainfm_lightning.evaluation.lesions import lesion_metrics, remove_small_lesions
from brainfm_lightning.evaluation.metrics import segmentation_metrics


def native_case_metrics(
    prediction: np.ndarray | torch.Tensor, affine: np.ndarray, label_path: str | Path, num_classes: int = 2,
    min_lesion_ml: float = 0.0,
) -> tuple[dict[str, torch.Tensor], dict[str, float], tuple[float, float, float]]:
    """Score one case against its original mask file, on that file's own voxel grid.

    The grid prediction is resampled (nearest neighbour) onto the mask's grid, as the prediction writer does; the
    mask is read as stored (rounded and checked by :func:`~brainfm_lightning.data.io.load_label`, not reoriented).
    Distances and volumes use the mask's voxel sizes in mm, so HD95 is in mm whatever the training spacing.
    Predicted lesions below ``min_lesion_ml`` are cleared on that grid first (:func:`remove_small_lesions`), as
    ``brainfm segment --min-lesion-ml`` clears them from the mask it writes.

    Args:
        prediction: Class-index map ``[1, X, Y, Z]`` on the preprocessing grid.
        affine: 4x4 affine of that grid.
        label_path: The case's original mask file.
        num_classes: Classes including background.
        min_lesion_ml: Smallest predicted lesion kept, in ml (0: all).

    Returns:
        ``(metrics, lesions, spacing)``: :func:`segmentation_metrics` of the case (tensors ``[1, num_classes - 1]``),
        :func:`lesion_metrics` (foreground: any label above 0) and the mask's voxel sizes.
    """
    truth, truth_affine = load_label(label_path, canonical=False)
    native = resample_to_grid(np.asarray(prediction, dtype=np.uint8), affine, truth.shape, truth_affine)[0]
    spacing = tuple(float(z) for z in nib.affines.voxel_sizes(truth_affine))
    if min_lesion_ml:
        native = remove_small_lesions(native, spacing, min_lesion_ml)
    metrics = segmentation_metrics(torch.from_numpy(native)[None, None], torch.from_numpy(truth)[None, None],
                                   num_classes, spacing)
    return metrics, lesion_metrics(native, truth, spacing), spacing  # type: ignore[return-value]
