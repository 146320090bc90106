"""Turns batches of modality names into embedding tensors through the module's :class:`ModalityTable`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.core.mixins import hparams_mixin
from typing_extensions import override

from brainfm_lightning.modalities import ModalityTable, TextEncoder


def injected_hparams_to_ignore() -> list[str]:
    """Hyperparameters not to save: none under LightningCLI, the injected network, head and optimizer otherwise.

    LightningCLI saves the config with its ``class_path`` entries, so ``load_from_checkpoint`` rebuilds the
    network and head from it; in plain Python the injected modules are not hyperparameters (pass ``net=`` and
    ``head=`` when loading).
    """
    return [] if hparams_mixin._given_hyperparameters.get() is not None else ["net", "head", "optimizer"]


class ModalityEmbeddingMixin(L.LightningModule):
    """Keeps the modality table (name -> text embedding) and stores it inside every checkpoint.

    Known names never need the text encoder; names seen for the first time (a new dataset, an unseen sequence)
    are embedded on the fly with ``text_encoder`` and added to the table, which the next checkpoint saves.
    """

    text_encoder: str
    modality_table_path: str | None
    descriptions: Mapping[str, str] | None
    aliases: Mapping[str, str] | None

    def _init_modality_table(self) -> None:
        self.modality_table: ModalityTable | None = None
        if self.modality_table_path:
            self.modality_table = ModalityTable.load(self.modality_table_path)
        self._embedding_rows: dict[str, int] = {}
        self._embedding_matrix: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        """Check the data's crop against the network and embed every modality name the data holds."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        crop, net = getattr(datamodule, "crop_size", None), getattr(self, "net", None)
        if crop is not None and net is not None and tuple(crop) != tuple(net.img_size):
            raise ValueError(f"data.crop_size {tuple(crop)} differs from the network's img_size {net.img_size}")
        if hasattr(datamodule, "modality_names"):
            self.ensure_modalities(datamodule.modality_names)

    def ensure_modalities(self, names: Sequence[str]) -> list[str]:
        """Add embeddings for names not yet in the table; returns the names added."""
        names = [n for n in names if n]
        if self.modality_table is None:
            encoder = TextEncoder.from_name(self.text_encoder)
            self.modality_table = ModalityTable(names=[], vectors=np.zeros((0, encoder.dim), np.float32),
                                                encoder_id=encoder.encoder_id, texts=[])
        added = self.modality_table.ensure(names, lambda: TextEncoder.from_name(self.text_encoder),
                                           descriptions=self.descriptions, aliases=self.aliases)
        expected = getattr(self, "modality_dim", None)
        if expected is not None and self.modality_table.dim != expected:
            raise ValueError(f"modality table {self.modality_table.encoder_id!r} has {self.modality_table.dim}-d "
                             f"vectors but the network expects modality_dim={expected}")
        self._embedding_matrix = None
        return added

    def modality_embeddings(self, modalities: Sequence[Sequence[str]], like: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, M, modality_dim]`` of a batch's names (zeros for the ``""`` padding)."""
        known = set(self.modality_table.names if self.modality_table else [])
        missing = sorted({n for row in modalities for n in row if n} - known)
        if missing:
            self.ensure_modalities(missing)
        if self._embedding_matrix is None or self._embedding_matrix.device != like.device:
            table = self.modality_table
            matrix = np.concatenate([np.zeros((1, table.dim), np.float32), table.vectors])  # row 0 = padding
            self._embedding_matrix = torch.from_numpy(matrix).to(like.device)
            self._embedding_rows = {name: row + 1 for row, name in enumerate(table.names)}
        rows = torch.tensor([[self._embedding_rows.get(n, 0) for n in row] for row in modalities], device=like.device)
        return self._embedding_matrix[rows].to(like.dtype)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.modality_table is not None:
            checkpoint["modality_table"] = self.modality_table.to_state()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "modality_table" not in checkpoint:
            return
        loaded = ModalityTable.from_state(checkpoint["modality_table"])
        current = self.modality_table
        if current is not None and current.encoder_id == loaded.encoder_id:
            for name in current.names:  # keep names embedded before the checkpoint was restored
                if name not in loaded:
                    loaded.add(name, current.vector(name), current.texts[current.index(name)])
        self.modality_table = loaded
        self._embedding_matrix = None

    def save_modality_table(self, path: str | Path) -> None:
        """Write the table as a ``.safetensors`` file (no pickle)."""
        if self.modality_table is None:
            raise ValueError("the modality table is empty: nothing to save")
        self.modality_table.save(path)
