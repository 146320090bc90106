"""Modality conditioning: sequence descriptions, the frozen text encoder and modality embedding tables.

The CLI subcommands live in :mod:`brainfm_lightning.commands.modalities` (``register``).
"""

from brainfm_lightning.modalities.descriptions import (
    DEFAULT_ALIASES,
    DEFAULT_DESCRIPTIONS,
    canonical_name,
    describe,
    normalize_key,
)
from brainfm_lightning.modalities.encoder import DISABLE_ENV_VAR, TextEncoder, TextEncoderUnavailableError
from brainfm_lightning.modalities.table import ModalityTable, build_table

__all__ = [
    "DEFAULT_ALIASES",
    "DEFAULT_DESCRIPTIONS",
    "DISABLE_ENV_VAR",
    "ModalityTable",
    "TextEncoder",
    "TextEncoderUnavailableError",
    "build_table",
    "canonical_name",
    "describe",
    "normalize_key",
]
