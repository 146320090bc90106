"""Lesion-wise detection and lesion volumes, as MS lesion challenges report them; removal of small predicted lesions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LESION_METRICS = ("lesion_f1", "lesion_tpr", "lesion_ppv", "reference_lesions", "predicted_lesions",
                  "reference_volume_ml", "predicted_volume_ml")


def _voxel_ml(spacing: float | Sequence[float]) -> float:
    """Volume of one voxel in millilitres, from its spacing in mm (one value or one per axis)."""
    spacings = [float(spacing)] * 3 if isinstance(spacing, int | float) else [float(s) for s in spacing]
    return math.prod(spacings) / 1000.0


def _lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The lesions of a boolean mask: its 26-connected components (labelled 1..n) and their number."""
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))


def lesion_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: float | Sequence[float] = 1.0
) -> dict[str, float]:
    """Lesion-wise detection between two binary masks of one case (foreground = any label above 0).

    Lesions are the 26-connected components of each mask. A reference lesion is detected when at least one
    predicted voxel overlaps it (``lesion_tpr`` = detected / reference lesions); a predicted lesion is a true
    positive when it overlaps a reference lesion (``lesion_ppv`` = true / predicted lesions); ``lesion_f1`` is their
    harmonic mean. Empty masks: with no reference and no predicted lesion F1 is 1 (nothing missed, nothing
    invented) and TPR and PPV are NaN; with lesions on one side only, F1 is 0 and the ratio without a denominator is
    NaN. Volumes are the foreground voxel counts times the voxel volume, in millilitres.

    Args:
        prediction: ``[X, Y, Z]`` label map (any integer or boolean type).
        reference: ``[X, Y, Z]`` ground truth of the same shape.
        spacing: Voxel spacing in mm (one value or one per axis).

    Returns:
        The :data:`LESION_METRICS`, as floats.
    """
    predicted, truth = np.asarray(prediction) > 0, np.asarray(reference) > 0
    if predicted.shape != truth.shape:
        raise ValueError(f"prediction {predicted.shape} and reference {truth.shape} differ in shape")
    voxel_ml = _voxel_ml(spacing)
    truth_components, n_truth = _lesions(truth)
    predicted_components, n_predicted = _lesions(predicted)
    detected = len(np.unique(truth_components[predicted & truth]))  # reference lesions touched by a prediction
    true_predicted = len(np.unique(predicted_components[predicted & truth]))
    tpr = detected / n_truth if n_truth else math.nan
    ppv = true_predicted / n_predicted if n_predicted else math.nan
    if n_truth == 0 and n_predicted == 0:
        f1 = 1.0
    elif n_truth == 0 or n_predicted == 0 or tpr + ppv == 0:
        f1 = 0.0
    else:
        f1 = 2 * tpr * ppv / (tpr + ppv)
    return {"lesion_f1": f1, "lesion_tpr": tpr, "lesion_ppv": ppv, "reference_lesions": float(n_truth),
            "predicted_lesions": float(n_predicted), "reference_volume_ml": float(truth.sum()) * voxel_ml,
            "predicted_volume_ml": float(predicted.sum()) * voxel_ml}


def remove_small_lesions(
    labels: np.ndarray, spacing: float | Sequence[float], min_volume_ml: float
) -> np.ndarray:
    """Clear every predicted lesion smaller than ``min_volume_ml``: nnU-Net-style post-processing of a label map.

    Lesions are the 26-connected foreground components, as :func:`lesion_metrics` counts them (every label above 0
    together). Isolated specks, which cost a lesion-free case its whole Dice, go; larger lesions keep all their
    voxels and labels.

    Args:
        labels: ``[X, Y, Z]`` label map (0 background).
        spacing: Voxel sizes in mm (one value or one per axis), e.g. ``nibabel.affines.voxel_sizes(affine)``.
        min_volume_ml: Smallest lesion kept, in millilitres; 0 keeps everything.

    Returns:
        A new label map of the same shape and dtype.

    Raises:
        ValueError: A negative ``min_volume_ml``.
    """
    if min_volume_ml < 0:
        raise ValueError(f"the smallest lesion volume must be >= 0 ml, got {min_volume_ml}")
    labels = np.array(labels)
    if min_volume_ml == 0:
        return labels
    components, _ = _lesions(labels > 0)
    voxels = np.bincount(components.ravel())
    small = np.flatnonzero(voxels < min_volume_ml / _voxel_ml(spacing) - 1e-6)  # exactly the threshold stays
    labels[np.isin(components, small[small > 0])] = 0
    return labels
