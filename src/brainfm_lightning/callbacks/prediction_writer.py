"""Writes ``brainfm predict`` outputs: session embeddings and their modality table, or NIfTI segmentation masks."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import nibabel as nib
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from typing_extensions import override

from brainfm_lightning.data.geometry import to_reference_space, write_like
from brainfm_lightning.evaluation.lesions import remove_small_lesions


def predictions_folder(trainer: L.Trainer, output_dir: str | Path | None) -> Path:
    """``output_dir``, or ``<trainer.default_root_dir>/predictions`` (moved with the run's other outputs)."""
    return Path(output_dir) if output_dir is not None else Path(trainer.default_root_dir) / "predictions"


class EmbeddingWriter(BasePredictionWriter):
    """Saves each rank's session embeddings to ``output_dir`` at the end of ``predict``.

    Files: ``embeddings-rank{r}.pt`` (``session_ids``, ``modalities``, ``embeddings`` ``[N, D]``), a readable
    ``sessions-rank{r}.csv``, and on rank 0 ``modality_table.safetensors``: the checkpoint's table plus any
    modality name first seen in this run.

    Args:
        output_dir: Folder for the files (created); ``None``: ``<trainer.default_root_dir>/predictions``.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir) if output_dir is not None else None

    @override
    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        folder = predictions_folder(trainer, self.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        outputs = [p for p in predictions if p is not None]
        session_ids = [s for p in outputs for s in p["session_ids"]]
        modalities = [[m for m in row if m] for p in outputs for row in p["modalities"]]
        embeddings = torch.cat([p["embedding"].float().cpu() for p in outputs]) if outputs else torch.empty(0)
        torch.save({"session_ids": session_ids, "modalities": modalities, "embeddings": embeddings},
                   folder / f"embeddings-rank{rank}.pt")
        with (folder / f"sessions-rank{rank}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session_id", "modalities"])
            writer.writerows([sid, "+".join(mods)] for sid, mods in zip(session_ids, modalities))
        if trainer.is_global_zero and getattr(pl_module, "modality_table", None) is not None:
            pl_module.modality_table.save(folder / "modality_table.safetensors")


def mask_file_name(session_id: str, suffix: str = "seg") -> str:
    """``<subject>_<session>_<suffix>.nii.gz`` of a ``subject/session`` id (unsafe characters become ``_``)."""
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", session_id.replace("/", "_")).strip("_")
    return f"{safe}_{suffix}.nii.gz"


class SegmentationWriter(BasePredictionWriter):
    """Writes each predicted session as a NIfTI mask that overlays its reference scan (the session's first scan).

    The label map on the preprocessing grid is mapped back onto the reference scan's own grid (reorientation,
    resampling, head crop and padding undone in one nearest-neighbour resampling,
    :func:`~brainfm_lightning.data.geometry.to_reference_space`) and written as ``<subject>_<session>_seg.nii.gz``:
    uint8 labels with exactly the reference's shape, affine and qform/sform. With ``probabilities``, the softmax of
    each foreground class is written next to it as ``<subject>_<session>_prob.nii.gz`` (float32, one volume per
    class, linear resampling). With ``min_lesion_ml``, predicted lesions smaller than that are cleared from the
    mask on the reference grid first (:func:`~brainfm_lightning.evaluation.lesions.remove_small_lesions`, as
    ``brainfm segment --min-lesion-ml``). Each rank writes the sessions it predicted, as soon as a batch is done;
    Lightning is told not to keep the predictions in memory.

    Args:
        output_dir: Folder of the masks (created); ``None``: ``<trainer.default_root_dir>/predictions``.
        probabilities: Also write the foreground probability maps.
        min_lesion_ml: Smallest predicted lesion written, in ml (0: all).
    """

    def __init__(self, output_dir: str | None = None, probabilities: bool = False, min_lesion_ml: float = 0.0) -> None:
        super().__init__(write_interval="batch")
        if not min_lesion_ml >= 0:
            raise ValueError(f"SegmentationWriter min_lesion_ml must be >= 0, got {min_lesion_ml}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.probabilities = probabilities
        self.min_lesion_ml = min_lesion_ml
        self.written: list[Path] = []

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.predict_loop.return_predictions = False  # whole volumes: written here, not accumulated
        pl_module.return_probabilities = self.probabilities
        self.written = []

    @override
    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Sequence[int] | None,
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        if prediction is None:
            return
        if "affines" not in prediction:
            raise ValueError("SegmentationWriter needs whole-volume predictions with their geometry: set "
                             "data.whole_volumes to true (or null) for brainfm predict")
        folder = predictions_folder(trainer, self.output_dir)
        labels = prediction["prediction"].cpu().numpy()
        for i, session_id in enumerate(prediction["session_ids"]):
            affine, reference = prediction["affines"][i], prediction["references"][i]
            native = to_reference_space(labels[i], affine, reference)[0]
            if self.min_lesion_ml:
                spacing = nib.affines.voxel_sizes(nib.load(reference).affine)
                native = remove_small_lesions(native, spacing, self.min_lesion_ml)
            self.written.append(write_like(native, reference, folder / mask_file_name(session_id)))
            if self.probabilities and "probabilities" in prediction:
                maps = prediction["probabilities"][i, 1:].float().numpy()
                native_maps = to_reference_space(maps, affine, reference, is_label=False)
                write_like(np.clip(native_maps, 0.0, 1.0), reference, folder / mask_file_name(session_id, "prob"),
                           dtype=np.float32)
