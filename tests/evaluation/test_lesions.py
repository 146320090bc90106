"""Lesion-wise detection against hand-made masks, including the empty cases; removal of small lesions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from brainfm_lightning.evaluation.lesions import lesion_metrics, remove_small_lesions


def masks() -> tuple[np.ndarray, np.ndarray]:
    """Three reference lesions; the prediction finds two of them, and adds one false lesion."""
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[2:5, 2:5, 2:5] = 1  # found (partly)
    reference[10:12, 10:12, 10:12] = 1  # found (exactly)
    reference[15:17, 2:4, 15:17] = 1  # missed
    prediction = np.zeros_like(reference)
    prediction[4:6, 4:6, 4:6] = 1  # overlaps the first lesion at one voxel
    prediction[10:12, 10:12, 10:12] = 2  # another label value still counts as lesion
    prediction[16:19, 16:19, 2:4] = 1  # nowhere near a lesion
    return prediction, reference


def test_detection_counts_and_f1_against_a_hand_count():
    row = lesion_metrics(*masks())
    assert (row["reference_lesions"], row["predicted_lesions"]) == (3, 3)
    assert row["lesion_tpr"] == pytest.approx(2 / 3) and row["lesion_ppv"] == pytest.approx(2 / 3)
    assert row["lesion_f1"] == pytest.approx(2 / 3)


def test_volumes_in_millilitres_follow_the_spacing():
    prediction, reference = masks()
    row = lesion_metrics(prediction, reference, spacing=(1.0, 1.0, 3.0))
    assert row["reference_volume_ml"] == pytest.approx((27 + 8 + 8) * 3 / 1000)
    assert row["predicted_volume_ml"] == pytest.approx((8 + 8 + 18) * 3 / 1000)


def test_diagonal_neighbours_are_one_lesion():
    reference = np.zeros((6, 6, 6), np.uint8)
    reference[1, 1, 1] = reference[2, 2, 2] = 1  # touching at a corner: one 26-connected lesion
    row = lesion_metrics(reference, reference)
    assert row["reference_lesions"] == 1 and row["lesion_f1"] == 1.0


def test_empty_cases():
    empty, lesion = np.zeros((6, 6, 6), np.uint8), np.zeros((6, 6, 6), np.uint8)
    lesion[2:4, 2:4, 2:4] = 1
    nothing = lesion_metrics(empty, empty)
    assert nothing["lesion_f1"] == 1.0 and math.isnan(nothing["lesion_tpr"]) and math.isnan(nothing["lesion_ppv"])
    invented = lesion_metrics(lesion, empty)
    assert invented["lesion_f1"] == 0.0 and invented["lesion_ppv"] == 0.0 and math.isnan(invented["lesion_tpr"])
    missed = lesion_metrics(empty, lesion)
    assert missed["lesion_f1"] == 0.0 and missed["lesion_tpr"] == 0.0 and math.isnan(missed["lesion_ppv"])


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        lesion_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_small_lesions_go_by_their_volume_in_ml_on_an_anisotropic_grid():
    labels = np.zeros((12, 12, 12), np.int16)
    labels[1, 1, 1] = 1  # 1 voxel of 1 x 1 x 3 mm: 0.003 ml
    labels[9, 9, 9] = labels[10, 10, 10] = 1  # diagonal neighbours, one lesion: 0.006 ml
    labels[4:7, 4:7, 4:6] = 1  # 18 voxels: 0.054 ml, two labels
    labels[5, 5, 5] = 2
    kept = remove_small_lesions(labels, (1.0, 1.0, 3.0), 0.006)  # a lesion of exactly the threshold stays
    components, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
    volumes = ndimage.sum(labels > 0, components, range(1, n + 1)) * 3.0 / 1000.0
    expected = np.where(np.isin(components, 1 + np.flatnonzero(volumes >= 0.006)), labels, 0)
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == np.int16 and kept[1, 1, 1] == 0 and kept[9, 9, 9] == 1 and kept[5, 5, 5] == 2
    assert remove_small_lesions(labels, (1.0, 1.0, 3.0), 0.007)[9:11, 9:11, 9:11].sum() == 0
    assert remove_small_lesions(labels, 1.0, 0.0) is not labels  # a copy, never the caller's array
    np.testing.assert_array_equal(remove_small_lesions(labels, 1.0, 0.0), labels)
    assert lesion_metrics(kept, labels, (1.0, 1.0, 3.0))["lesion_tpr"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="-1"):
        remove_small_lesions(labels, 1.0, -1.0)
