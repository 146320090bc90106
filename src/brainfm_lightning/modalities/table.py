"""Modality table: sequence names -> frozen text-embedding vectors, tagged with the encoder that made them.

A table is what a checkpoint carries instead of the text encoder, so a trained model can run on a
machine without the encoder. It is stored either inside a checkpoint (``to_state``/``from_state``,
plain types + tensors, safe under ``torch.load(weights_only=True)``) or as a ``.safetensors`` file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainfm_lightning.modalities.descriptions import describe
from brainfm_lightning.modalities.encoder import TextEncoder

__all__ = ["ModalityTable", "build_table"]

_META_KEY = "brainfm_modality_table"
_FORMAT_VERSION = 1


@dataclass
class ModalityTable:
    """Names, their embedded texts and unit vectors ``[K, dim]`` from one text encoder."""

    names: list[str]
    vectors: np.ndarray
    encoder_id: str
    texts: list[str]

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.texts = [str(t) for t in self.texts]
        self.vectors = np.ascontiguousarray(np.asarray(self.vectors, dtype=np.float32))
        if not isinstance(self.encoder_id, str) or not self.encoder_id:
            raise ValueError(f"encoder_id must be a non-empty string, got {self.encoder_id!r}")
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D [K, dim], got shape {self.vectors.shape}")
        if not (len(self.names) == len(self.texts) == self.vectors.shape[0]):
            raise ValueError(
                f"names ({len(self.names)}), texts ({len(self.texts)}) and vectors ({self.vectors.shape[0]} rows) "
                "must have the same length"
            )
        if self.vectors.shape[1] == 0 or not np.isfinite(self.vectors).all():
            raise ValueError(f"vectors must have dim > 0 and finite values, got shape {self.vectors.shape}")
        if not all(n.strip() for n in self.names):
            raise ValueError(f"modality names must be non-empty, got {self.names!r}")
        dupes = sorted({n for n in self.names if self.names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate modality names: {dupes}")

    @property
    def dim(self) -> int:
        """Embedding length."""
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def index(self, name: str) -> int:
        """Row of ``name``; raises KeyError naming it and the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"modality {name!r} is not in the table; known: {self.names}") from None

    def vector(self, name: str) -> np.ndarray:
        """Embedding of ``name`` as float32 ``[dim]`` (a copy)."""
        return self.vectors[self.index(name)].copy()

    def add(self, name: str, vector: np.ndarray | Sequence[float], text: str) -> None:
        """Append one modality.

        Args:
            name: New, unique modality name.
            vector: Its embedding, ``[dim]`` or ``[1, dim]``.
            text: The text that was embedded.

        Raises:
            ValueError: On a duplicate/empty name, wrong dimension or non-finite values.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"modality name must be a non-empty string, got {name!r}")
        if name in self.names:
            raise ValueError(f"modality {name!r} is already in the table")
        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row.shape[0] != self.dim:
            raise ValueError(f"vector for {name!r} has dim {row.shape[0]}, table dim is {self.dim}")
        if not np.isfinite(row).all():
            raise ValueError(f"vector for {name!r} contains NaN or infinite values")
        self.vectors = np.concatenate([self.vectors, row[None, :]], axis=0)
        self.names.append(name)
        self.texts.append(str(text))

    def ensure(
        self,
        names: Sequence[str],
        encoder_factory: Callable[[], TextEncoder],
        descriptions: Mapping[str, str] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Embed and add the names that are missing; the encoder is only created if something is missing.

        Args:
            names: Names that must be present afterwards.
            encoder_factory: Returns the encoder (e.g. ``lambda: TextEncoder.from_name("minilm")``).
            descriptions: Extra/overriding canonical key -> text for ``describe``.
            aliases: Extra/overriding alias -> canonical key for ``describe``.

        Returns:
            The names that were added, in order of first appearance.

        Raises:
            ValueError: If the factory's encoder differs from the one that built this table.
        """
        missing = list(dict.fromkeys(n for n in names if n not in self.names))
        if not missing:
            return []
        encoder = encoder_factory()
        if encoder.encoder_id != self.encoder_id:
            raise ValueError(
                f"cannot add {missing} with text encoder {encoder.encoder_id!r}: this table was built with "
                f"{self.encoder_id!r}, and mixing encoders is not allowed (their vectors are not comparable); "
                "use the same encoder or rebuild the table"
            )
        texts = [describe(n, descriptions, aliases) for n in missing]
        for name, text, row in zip(missing, texts, encoder.encode(texts), strict=True):
            self.add(name, row, text)
        return missing

    def cosine_similarity(self, names: Sequence[str] | None = None) -> np.ndarray:
        """Pairwise cosine similarity, float64 ``[k, k]`` over ``names`` (all by default, in table order)."""
        rows = self.vectors if names is None else self.vectors[[self.index(n) for n in names]]
        unit = rows.astype(np.float64)
        unit /= np.clip(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12, None)
        return unit @ unit.T

    def to_state(self) -> dict[str, Any]:
        """Plain-python/tensor state for a Lightning checkpoint (loads with ``weights_only=True``)."""
        return {
            "names": list(self.names),
            "texts": list(self.texts),
            "encoder_id": self.encoder_id,
            "vectors": torch.from_numpy(self.vectors.copy()),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ModalityTable:
        """Inverse of :meth:`to_state`; raises ValueError naming missing keys."""
        missing = [k for k in ("names", "texts", "encoder_id", "vectors") if k not in state]
        if missing:
            raise ValueError(f"modality table state lacks keys {missing}; has {sorted(state)}")
        vectors = state["vectors"]
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().to("cpu", torch.float32).numpy()
        return cls(list(state["names"]), np.array(vectors, dtype=np.float32), state["encoder_id"], list(state["texts"]))

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file: the vectors as a tensor, names/texts/encoder_id as JSON metadata."""
        from safetensors.numpy import save_file

        path = Path(path)
        meta = {"version": _FORMAT_VERSION, "names": self.names, "texts": self.texts, "encoder_id": self.encoder_id}
        save_file({"vectors": self.vectors}, str(path), metadata={_META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModalityTable:
        """Read a table written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is not a readable modality table (message names the file).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"modality table file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                vectors = handle.get_tensor("vectors")
            meta = json.loads(metadata[_META_KEY])
            return cls(list(meta["names"]), vectors, meta["encoder_id"], list(meta["texts"]))
        except Exception as err:  # safetensors raises several types for truncated/foreign files
            raise ValueError(f"{path} is not a valid modality table file ({type(err).__name__}: {err})") from err


def build_table(
    names: Sequence[str],
    encoder: TextEncoder,
    descriptions: Mapping[str, str] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> ModalityTable:
    """Embed ``describe(name)`` for each distinct name (order kept) with ``encoder``.

    Args:
        names: Modality names; duplicates are dropped.
        encoder: The text encoder.
        descriptions: Extra/overriding canonical key -> text.
        aliases: Extra/overriding alias -> canonical key.

    Returns:
        The new table.
    """
    if isinstance(names, str):
        raise ValueError(f"names must be a sequence of names, not a single string: {names!r}")
    unique = list(dict.fromkeys(names))
    texts = [describe(n, descriptions, aliases) for n in unique]
    vectors = encoder.encode(texts) if unique else np.zeros((0, encoder.dim), dtype=np.float32)
    return ModalityTable(unique, vectors, encoder.encoder_id, texts)
