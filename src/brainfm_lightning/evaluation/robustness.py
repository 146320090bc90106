"""Robustness to missing sequences: segment every session from every non-empty subset of its modalities."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from brainfm_lightning.evaluation.lesions import remove_small_lesions
from brainfm_lightning.evaluation.metrics import SEGMENTATION_METRICS, segmentation_metrics, write_metrics_csv
from brainfm_lightning.evaluation.native import native_case_metrics


class SubsetSegmenter(Protocol):
    """What :func:`evaluate_modality_subsets` needs (``SegmentationModule`` provides it)."""

    def modality_embeddings(self, modalities: Sequence[Sequence[str]], like: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, M, E]`` of a batch's slot names, on ``like``'s device and dtype."""
        ...

    def predict_logits(self, images: torch.Tensor, modality_embeddings: torch.Tensor,
                       present: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, *S]`` of volumes ``[B, M, *S]`` of any size."""
        ...


def modality_subsets(names: Sequence[str], max_missing: int | None = None) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names`` lacking at most ``max_missing`` of them (all: ``None``).

    Smallest first, each in the order of ``names``.
    """
    smallest = 1 if max_missing is None else max(1, len(names) - max_missing)
    return [s for k in range(smallest, len(names) + 1) for s in itertools.combinations(names, k)]


@torch.no_grad()
def evaluate_modality_subsets(
    module: SubsetSegmenter,
    batches: Iterable[Mapping[str, Any] | None],
    out_dir: str | Path,
    num_classes: int = 2,
    spacing: float | Sequence[float] = 1.0,
    max_missing: int | None = None,
    min_lesion_ml: float = 0.0,
) -> list[dict[str, object]]:
    """Segment each session once per non-empty subset of its modalities (others dropped through ``present``).

    Whole-volume batches (with ``label_paths``, as ``brainfm test`` sees them) are scored in native space against
    the mask files (:func:`~brainfm_lightning.evaluation.native.native_case_metrics`, ``spacing`` unused), with the
    lesion-wise ``lesion_f1``, ``lesion_tpr`` and ``lesion_ppv`` as well; crops on their grid. Writes to ``out_dir``:
    ``robustness_cases.csv`` (one row per session and subset), ``robustness.csv`` and
    ``robustness.md`` (NaN-aware means per subset, best Dice first) and ``robustness.png`` (a heatmap: one row per
    subset, the cells of its modalities coloured by its mean Dice).

    Args:
        module: A trained segmentation module (in eval mode), e.g. ``SegmentationModule``.
        batches: Batches with labels, e.g. ``datamodule.test_dataloader()`` with ``with_label=True``.
        out_dir: Output folder (created).
        num_classes: Classes including background.
        spacing: Voxel spacing in mm for HD95.
        max_missing: Only the subsets that lack at most this many of a session's modalities (``1``: the full set
            and each one left out, what a leave-one-out table needs); ``None``: every subset.
        min_lesion_ml: Post-processing: predicted lesions smaller than this (ml) are cleared before scoring, on
            the mask's grid for whole volumes (:func:`~brainfm_lightning.evaluation.lesions.remove_small_lesions`;
            0: none).

    Returns:
        The summary rows: ``subset``, ``n_modalities``, ``n_cases`` and the mean of each metric.
    """
    rows: list[dict[str, object]] = []
    for batch in batches:
        if batch is None:
            continue
        images, present = batch["images"], batch["present"]
        embeddings = module.modality_embeddings(batch["modalities"], like=images)
        for i, session in enumerate(batch["session_ids"]):
            slots = [m for m in range(present.shape[1]) if present[i, m]]
            for subset in modality_subsets(slots, max_missing):
                kept = torch.zeros_like(present[i : i + 1])
                kept[0, list(subset)] = True
                offset = batch["head_offset"][i : i + 1] if "head_offset" in batch else None
                logits = module.predict_logits(images[i : i + 1], embeddings[i : i + 1], kept, offset)
                prediction = logits.argmax(1, keepdim=True)
                lesions: dict[str, float] = {}
                if batch.get("label_paths") is not None:
                    metrics, lesions, _ = native_case_metrics(prediction[0].to(torch.uint8).cpu().numpy(),
                                                              batch["affines"][i], batch["label_paths"][i], num_classes,
                                                              min_lesion_ml)
                else:
                    if min_lesion_ml:
                        kept_labels = remove_small_lesions(prediction[0, 0].cpu().numpy(), spacing, min_lesion_ml)
                        prediction = torch.from_numpy(kept_labels)[None, None].to(prediction.device)
                    metrics = segmentation_metrics(prediction, batch["label"][i : i + 1].to(prediction.device),
                                                   num_classes, spacing)
                names = [batch["modalities"][i][m] for m in subset]
                rows.append({"case": session, "subset": "+".join(sorted(names)), "n_modalities": len(names)}
                            | {k: float(v.nanmean()) for k, v in metrics.items()}
                            | {k: lesions[k] for k in ("lesion_f1", "lesion_tpr", "lesion_ppv") if k in lesions})
    if not rows:
        raise ValueError("no session to evaluate: the batches were empty")
    out_dir = Path(out_dir)
    write_metrics_csv(rows, out_dir / "robustness_cases.csv")
    summary = summarize_subsets(rows)
    write_metrics_csv(summary, out_dir / "robustness.csv", with_aggregate=False)
    (out_dir / "robustness.md").write_text(markdown_table(summary))
    plot_subset_heatmap(summary, out_dir / "robustness.png")
    return summary


def summarize_subsets(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """NaN-aware mean of each metric per subset, sorted by mean Dice (best first)."""
    summary: list[dict[str, object]] = []
    for subset in sorted({str(r["subset"]) for r in rows}):
        cases = [r for r in rows if r["subset"] == subset]
        means = {}
        for name in [m for m in (*SEGMENTATION_METRICS, "lesion_f1") if m in cases[0]]:
            values = np.array([float(r[name]) for r in cases])  # type: ignore[arg-type]
            means[name] = float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")
        summary.append({"subset": subset, "n_modalities": cases[0]["n_modalities"], "n_cases": len(cases)} | means)
    return sorted(summary, key=lambda r: -np.nan_to_num(float(r["dice"]), nan=-1.0))  # type: ignore[arg-type]


def markdown_table(summary: Sequence[Mapping[str, object]]) -> str:
    """A GitHub-flavoured markdown table of :func:`summarize_subsets` rows (4 decimals)."""
    columns = list(summary[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in summary:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_subset_heatmap(summary: Sequence[Mapping[str, object]], path: str | Path) -> None:
    """Rows: subsets; columns: modalities; a cell holds the subset's mean Dice when the modality is in it."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    modalities = sorted({m for row in summary for m in str(row["subset"]).split("+")})
    grid = np.full((len(summary), len(modalities)), np.nan)
    labels = []
    for r, row in enumerate(summary):
        dice = float(row["dice"])  # type: ignore[arg-type]
        labels.append(f"{row['subset']} ({dice:.3f})")
        for m in str(row["subset"]).split("+"):
            grid[r, modalities.index(m)] = dice
    figure = Figure(figsize=(1.2 * len(modalities) + 3, 0.35 * len(summary) + 1.5))
    axes = figure.subplots()
    image = axes.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(range(len(modalities)), modalities)
    axes.set_yticks(range(len(summary)), labels)
    axes.set_title("Mean Dice per available-modality subset")
    figure.colorbar(image, ax=axes, label="Dice")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
