"""The network in plain torch: importable and callable without Lightning."""

from brainfm_lightning.models.classification_head import ClassificationHead
from brainfm_lightning.models.cln import ConditionalLayerNorm
from brainfm_lightning.models.mae import MAEOutput, ModalityMAE
from brainfm_lightning.models.patch_embed import patchify, unpatchify
from brainfm_lightning.models.presets import PRESETS
from brainfm_lightning.models.seg_head import ModalityUNETR

__all__ = ["PRESETS", "ClassificationHead", "ConditionalLayerNorm", "MAEOutput", "ModalityMAE", "ModalityUNETR",
           "patchify", "unpatchify"]
