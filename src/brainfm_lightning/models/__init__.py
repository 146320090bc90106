"""The network in plain torch: importable and callable without Lightning."""

from brainfm_lightning.models.cln import ConditionalLayerNorm
from brainfm_lightning.models.mae import MAEOutput, ModalityMAE
from brainfm_lightning.models.patch_embed import patchify, unpatchify
from brainfm_lightning.models.presets import PRESETS

__all__ = ["PRESETS", "ConditionalLayerNorm", "MAEOutput", "ModalityMAE", "patchify", "unpatchify"]
