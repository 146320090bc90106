"""LightningModules: glue between injected networks, losses, optimizers and Lightning's loops."""

from brainfm_lightning.modules.classification import ClassificationModule
from brainfm_lightning.modules.pretrain import MAEPretrainModule
from brainfm_lightning.modules.segmentation import SegmentationModule
from brainfm_lightning.modules.unet_baseline import UNetBaselineModule

__all__ = ["MAEPretrainModule"]
__all__ += ["ClassificationModule", "SegmentationModule"]
__all__ += ["UNetBaselineModule"]
