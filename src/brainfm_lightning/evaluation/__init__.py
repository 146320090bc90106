"""Evaluation: per-case metrics through MONAI and torchmetrics, CSV reports, robustness to missing modalities."""

from brainfm_lightning.evaluation.metrics import (
    SEGMENTATION_METRICS,
    aggregate_rows,
    classification_metric_collection,
    classification_metrics,
    image_diagonal,
    segmentation_metrics,
    segmentation_rows,
    write_metrics_csv,
)
from brainfm_lightning.evaluation.robustness import evaluate_modality_subsets, modality_subsets

__all__ = [
    "SEGMENTATION_METRICS",
    "aggregate_rows",
    "classification_metric_collection",
    "classification_metrics",
    "evaluate_modality_subsets",
    "image_diagonal",
    "modality_subsets",
    "segmentation_metrics",
    "segmentation_rows",
    "write_metrics_csv",
]
