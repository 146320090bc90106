"""Metrics against hand-computed values on tiny masks, empty masks included, and the CSV report."""

import csv
import math

import pytest
import torch

from brainfm_lightning.evaluation import (
    classification_metrics,
    image_diagonal,
    segmentation_metrics,
    segmentation_rows,
    write_metrics_csv,
)


def cube(size: int, start: tuple[int, int, int], edge: int, value: int = 1) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, size, dtype=torch.uint8)
    x, y, z = start
    mask[0, 0, x:x + edge, y:y + edge, z:z + edge] = value
    return mask


def test_overlapping_cubes_match_hand_values():
    label = cube(5, (1, 1, 1), 2)  # 8 voxels
    prediction = cube(5, (1, 1, 2), 2)  # shifted one voxel along z: 4 shared, 4 false positives
    metrics = segmentation_metrics(prediction, label)
    assert metrics["dice"].item() == pytest.approx(2 * 4 / (8 + 8))
    assert metrics["sensitivity"].item() == pytest.approx(4 / 8)
    assert metrics["specificity"].item() == pytest.approx((125 - 12) / (125 - 8))


@pytest.mark.parametrize(("shift", "spacing"), [(1, 1.0), (2, 1.0), (2, 2.5)])
def test_hd95_of_shifted_cubes_is_the_shift_in_mm(shift, spacing):
    # surface voxels of a 3^3 cube lie 0, 1, .., shift voxels from the other cube's surface
    label = cube(9, (1, 2, 2), 3)
    prediction = cube(9, (1 + shift, 2, 2), 3)
    hd95 = segmentation_metrics(prediction, label, spacing=spacing)["hd95"].item()
    assert hd95 == pytest.approx(shift * spacing)


def test_hd95_ignores_a_single_outlier_that_the_maximum_would_count():
    label = cube(12, (1, 1, 1), 3)
    prediction = label.clone()
    prediction[0, 0, 10, 10, 10] = 1  # one far false-positive voxel among 27 surface voxels: above the 95th centile
    metrics = segmentation_metrics(prediction, label)
    assert metrics["hd95"].item() == pytest.approx(0.0)
    assert metrics["dice"].item() == pytest.approx(2 * 27 / (27 + 28))


def test_anisotropic_spacing_scales_each_axis():
    label = cube(9, (1, 2, 2), 3)
    prediction = cube(9, (3, 2, 2), 3)  # shifted 2 voxels along the first axis only
    hd95 = segmentation_metrics(prediction, label, spacing=(3.0, 1.0, 1.0))["hd95"].item()
    assert hd95 == pytest.approx(6.0)


def test_empty_masks_follow_the_documented_convention():
    empty = torch.zeros(1, 1, 5, 5, 5, dtype=torch.uint8)
    lesion = cube(5, (1, 1, 1), 2)
    both = segmentation_metrics(empty, empty)
    assert both["dice"].item() == 1.0 and both["hd95"].item() == 0.0
    assert math.isnan(both["sensitivity"].item()) and both["specificity"].item() == 1.0
    diagonal = math.sqrt(3 * (5 * 2.0) ** 2)
    for prediction, label in [(empty, lesion), (lesion, empty)]:  # missed lesion, hallucinated lesion
        one = segmentation_metrics(prediction, label, spacing=2.0)
        assert one["dice"].item() == 0.0
        assert one["hd95"].item() == pytest.approx(diagonal)
        assert math.isnan(segmentation_metrics(prediction, label, empty_distance="nan")["hd95"].item())
    assert segmentation_metrics(empty, lesion)["sensitivity"].item() == 0.0
    assert segmentation_metrics(lesion, empty)["specificity"].item() == pytest.approx((125 - 8) / 125)


def test_image_diagonal_matches_brats_convention():
    assert image_diagonal((240, 240, 155), 1.0) == pytest.approx(373.13, abs=0.01)


def test_multiclass_metrics_are_per_foreground_class():
    label = cube(6, (0, 0, 0), 2) + cube(6, (3, 3, 3), 2, value=2)
    prediction = cube(6, (0, 0, 0), 2)  # class 2 missed entirely
    metrics = segmentation_metrics(prediction, label, num_classes=3)
    assert metrics["dice"].tolist() == [[1.0, 0.0]]
    rows = segmentation_rows(["s1"], metrics)
    assert rows[0]["dice_1"] == 1.0 and rows[0]["dice_2"] == 0.0


def test_bad_arguments_fail_naming_the_value():
    mask = cube(5, (1, 1, 1), 2)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        segmentation_metrics(mask, mask, num_classes=1)
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_metrics(mask, cube(6, (1, 1, 1), 2))


def test_csv_holds_cases_and_nan_aware_aggregate(tmp_path):
    rows = [{"case": "a", "dice": 0.5, "hd95": 2.0}, {"case": "b", "dice": 1.0, "hd95": float("nan")}]
    summary = write_metrics_csv(rows, tmp_path / "out" / "metrics.csv")
    assert summary["mean"] == {"dice": 0.75, "hd95": 2.0}
    assert summary["n_valid"] == {"dice": 2.0, "hd95": 1.0}
    written = list(csv.DictReader((tmp_path / "out" / "metrics.csv").open()))
    assert [r["case"] for r in written] == ["a", "b", "mean", "std", "n_valid"]
    assert float(written[2]["dice"]) == 0.75 and math.isnan(float(written[1]["hd95"]))


def test_binary_accuracy_and_auc_match_hand_values():
    scores = torch.tensor([0.9, 0.4, 0.6, 0.2])
    targets = torch.tensor([1, 1, 0, 0])
    values = classification_metrics(scores, targets, "binary")
    assert values["acc"] == pytest.approx(0.5)  # 0.9 and 0.2 right at threshold 0.5
    assert values["auc"] == pytest.approx(3 / 4)  # positive-negative pairs ranked right: 3 of 4


def test_auc_is_nan_with_a_single_class_and_regression_reports_mae_r2():
    assert math.isnan(classification_metrics(torch.tensor([0.2, 0.7]), torch.tensor([1, 1]), "binary")["auc"])
    values = classification_metrics(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 4.0]), "regression")
    assert values["mae"] == pytest.approx(1 / 3)
    assert values["r2"] == pytest.approx(1 - 1 / (14 / 3))  # SS_res = 1, SS_tot = 14/3
