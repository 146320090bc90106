"""Per-case segmentation and classification metrics through MONAI and torchmetrics, and their CSV report."""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot
from torchmetrics import MeanAbsoluteError, MetricCollection, R2Score
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy, MulticlassAUROC
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

Task = Literal["binary", "multiclass", "regression"]
SEGMENTATION_METRICS = ("dice", "hd95", "sensitivity", "specificity")


def as_one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-index map ``[B, 1, *S]`` (or ``[B, *S]``) -> one-hot float ``[B, num_classes, *S]``."""
    if mask.ndim < 3:
        raise ValueError(f"expected a batched class-index map [B, 1, *spatial], got shape {tuple(mask.shape)}")
    if mask.shape[1] != 1:
        mask = mask[:, None]
    return one_hot(mask.long(), num_classes, dim=1)


def image_diagonal(shape: Sequence[int], spacing: float | Sequence[float] = 1.0) -> float:
    """Length in mm of the diagonal of a volume of ``shape`` voxels (BraTS' 373.13 for 240 x 240 x 155 at 1 mm)."""
    spacings = [float(spacing)] * len(shape) if isinstance(spacing, int | float) else [float(s) for s in spacing]
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacings, strict=True)))


def segmentation_metrics(
    prediction: torch.Tensor,
    label: torch.Tensor,
    num_classes: int = 2,
    spacing: float | Sequence[float] = 1.0,
    empty_distance: Literal["diagonal", "nan"] = "diagonal",
) -> dict[str, torch.Tensor]:
    """Per-case, per-foreground-class Dice, HD95 (mm), sensitivity and specificity.

    Empty masks (a class absent from the prediction and/or the ground truth of a case):

    - both empty: Dice 1 and HD95 0 (a correct "nothing there"); sensitivity is NaN (no positives).
    - one empty: Dice 0; HD95 is the image diagonal in mm (``empty_distance="diagonal"``, the BraTS convention, so
      a missed or hallucinated lesion is penalised in means) or NaN (``"nan"``, left out of NaN-aware means).
    - sensitivity ``TP / (TP + FN)`` is NaN without ground-truth foreground, specificity ``TN / (TN + FP)``
      is NaN when the ground truth is all foreground (MONAI's confusion-matrix convention).

    Args:
        prediction: Class-index map ``[B, 1, *S]`` (argmax of the logits).
        label: Ground-truth class-index map ``[B, 1, *S]``.
        num_classes: Classes including the background 0; metrics cover classes ``1..num_classes-1``.
        spacing: Voxel spacing in mm, one number or one per spatial axis.
        empty_distance: HD95 when exactly one of prediction and ground truth is empty.

    Returns:
        ``dice``, ``hd95``, ``sensitivity``, ``specificity``: float ``[B, num_classes - 1]`` each.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background and one class), got {num_classes}")
    if empty_distance not in ("diagonal", "nan"):
        raise ValueError(f"empty_distance must be 'diagonal' or 'nan', got {empty_distance!r}")
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape")
    y_pred = as_one_hot(prediction.detach().cpu(), num_classes)
    y = as_one_hot(label.detach().cpu(), num_classes)
    dice = compute_dice(y_pred, y, include_background=False, ignore_empty=False)
    confusion = get_confusion_matrix(y_pred, y, include_background=False)  # [B, C-1, 4]: tp, fp, tn, fn
    with warnings.catch_warnings():  # MONAI warns on empty masks; they are handled below
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95, spacing=spacing)
    pred_empty = y_pred[:, 1:].flatten(2).sum(-1) == 0
    true_empty = y[:, 1:].flatten(2).sum(-1) == 0
    one_empty = float("nan") if empty_distance == "nan" else image_diagonal(label.shape[2:], spacing)
    hd95 = torch.where(pred_empty & true_empty, torch.zeros_like(hd95), hd95)
    hd95 = torch.where(pred_empty ^ true_empty, torch.full_like(hd95, one_empty), hd95)
    return {
        "dice": dice.float(),
        "hd95": hd95.float(),
        "sensitivity": compute_confusion_matrix_metric("sensitivity", confusion).float(),
        "specificity": compute_confusion_matrix_metric("specificity", confusion).float(),
    }


def segmentation_rows(case_ids: Sequence[str], metrics: Mapping[str, torch.Tensor]) -> list[dict[str, object]]:
    """One row per case: ``case``, then ``<metric>`` (binary) or ``<metric>_<class>`` per foreground class."""
    rows: list[dict[str, object]] = []
    for i, case in enumerate(case_ids):
        row: dict[str, object] = {"case": case}
        for name, values in metrics.items():
            per_class = values[i].tolist()
            if len(per_class) == 1:
                row[name] = per_class[0]
            else:
                row.update({f"{name}_{c + 1}": v for c, v in enumerate(per_class)})
        rows.append(row)
    return rows


def aggregate_rows(rows: Sequence[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """NaN-aware summary of the numeric columns: ``mean``, ``std`` and ``n_valid`` (cases that are not NaN).

    ``mean`` and ``std`` ignore NaN cases and are NaN themselves when no case has a value.
    """
    columns = [k for k in rows[0] if isinstance(rows[0][k], int | float) and not isinstance(rows[0][k], bool)]
    summary: dict[str, dict[str, float]] = {"mean": {}, "std": {}, "n_valid": {}}
    for column in columns:
        values = np.array([float(r[column]) for r in rows], dtype=np.float64)  # type: ignore[arg-type]
        finite = values[~np.isnan(values)]
        summary["mean"][column] = float(finite.mean()) if finite.size else float("nan")
        summary["std"][column] = float(finite.std()) if finite.size else float("nan")
        summary["n_valid"][column] = float(finite.size)
    return summary


def write_metrics_csv(
    rows: Sequence[Mapping[str, object]], path: str | Path, with_aggregate: bool = True
) -> dict[str, dict[str, float]]:
    """Write per-case rows, then the ``mean``, ``std`` and ``n_valid`` rows of :func:`aggregate_rows`.

    Args:
        rows: Per-case dicts sharing their keys; the first key names the case (e.g. from :func:`segmentation_rows`).
        path: The CSV file to write (parents are created).
        with_aggregate: Append the aggregate rows (the first column holds their names).

    Returns:
        The aggregate, as :func:`aggregate_rows`.
    """
    if not rows:
        raise ValueError(f"no per-case rows to write to {path}")
    summary = aggregate_rows(rows)
    fieldnames = list(rows[0])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        for name, values in summary.items() if with_aggregate else ():
            writer.writerow({fieldnames[0]: name} | values)
    return summary


class DefinedBinaryAUROC(BinaryAUROC):
    """torchmetrics' binary AUROC, but NaN (not 0 with a warning) when the targets hold a single class."""

    @override
    def compute(self) -> torch.Tensor:
        if dim_zero_cat(self.target).unique().numel() < 2:
            return torch.tensor(float("nan"))
        return super().compute()


class DefinedMulticlassAUROC(MulticlassAUROC):
    """torchmetrics' one-vs-rest multiclass AUROC, but NaN when a class is absent from the targets."""

    @override
    def compute(self) -> torch.Tensor:
        if dim_zero_cat(self.target).unique().numel() < self.num_classes:
            return torch.tensor(float("nan"))
        return super().compute()


def classification_metric_collection(task: Task, num_classes: int = 2, prefix: str = "") -> MetricCollection:
    """The torchmetrics accumulators: ``acc`` and ``auc`` (binary, multiclass) or ``mae`` and ``r2`` (regression).

    Binary scores are probabilities of class 1 ``[N]``; multiclass scores are probabilities ``[N, C]``. AUC is NaN
    when a class is absent from the targets (undefined), not torchmetrics' 0.
    """
    if task == "binary":
        metrics = {"acc": BinaryAccuracy(), "auc": DefinedBinaryAUROC()}
    elif task == "multiclass":
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro"), "auc": DefinedMulticlassAUROC(num_classes)}
    elif task == "regression":
        metrics = {"mae": MeanAbsoluteError(), "r2": R2Score()}
    else:
        raise ValueError(f"task must be 'binary', 'multiclass' or 'regression', got {task!r}")
    return MetricCollection(metrics, prefix=prefix)


def classification_metrics(
    scores: torch.Tensor, targets: torch.Tensor, task: Task, num_classes: int = 2
) -> dict[str, float]:
    """Metrics of :func:`classification_metric_collection` over a whole set (AUC is NaN when a class is absent).

    Args:
        scores: Probabilities (binary ``[N]``, multiclass ``[N, C]``) or predicted values (regression ``[N]``).
        targets: Class indices ``[N]`` or true values ``[N]``.
        task: ``binary``, ``multiclass`` or ``regression``.
        num_classes: Classes of a multiclass task.
    """
    collection = classification_metric_collection(task, num_classes)
    return {name: float(value) for name, value in collection(scores, targets).items()}
