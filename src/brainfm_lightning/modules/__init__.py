"""LightningModules: glue between injected networks, losses, optimizers and Lightning's loops."""

from brainfm_lightning.modules.pretrain import MAEPretrainModule

__all__ = ["MAEPretrainModule"]
