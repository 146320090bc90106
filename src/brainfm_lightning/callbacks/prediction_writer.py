"""Writes ``brainfm predict`` outputs (session embeddings) and the modality table used to compute them."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class EmbeddingWriter(BasePredictionWriter):
    """Saves each rank's session embeddings to ``output_dir`` at the end of ``predict``.

    Files: ``embeddings-rank{r}.pt`` (``session_ids``, ``modalities``, ``embeddings`` ``[N, D]``), a readable
    ``sessions-rank{r}.csv``, and on rank 0 ``modality_table.safetensors``: the checkpoint's table plus any
    modality name first seen in this run.

    Args:
        output_dir: Folder for the files (created).
    """

    def __init__(self, output_dir: str = "predictions") -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = Path(output_dir)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Any
    ) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        outputs = [p for p in predictions if p is not None]
        session_ids = [s for p in outputs for s in p["session_ids"]]
        modalities = [[m for m in row if m] for p in outputs for row in p["modalities"]]
        embeddings = torch.cat([p["embedding"].float().cpu() for p in outputs]) if outputs else torch.empty(0)
        torch.save({"session_ids": session_ids, "modalities": modalities, "embeddings": embeddings},
                   self.output_dir / f"embeddings-rank{rank}.pt")
        with (self.output_dir / f"sessions-rank{rank}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["session_id", "modalities"])
            writer.writerows([sid, "+".join(mods)] for sid, mods in zip(session_ids, modalities))
        if trainer.is_global_zero and getattr(pl_module, "modality_table", None) is not None:
            pl_module.modality_table.save(self.output_dir / "modality_table.safetensors")
