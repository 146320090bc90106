"""LightningModules: glue between injected networks, losses, optimizers and Lightning's loops."""

from brainfm_lightning.modules.classification import ClassificationModule
from brainfm_lightning.modules.pretrain import MAEPretrainModule
from brainfm_lightning.modules.segmentation import SegmentationModule

__all__ = ["MAEPretrainModule"]
__all__ += ["ClassificationModule", "SegmentationModule"]
