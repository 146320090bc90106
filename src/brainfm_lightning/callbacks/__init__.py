"""Lightning callbacks."""

from brainfm_lightning.callbacks.vicreg_warmup import VICRegWarmup, warmup_scale

__all__ = ["VICRegWarmup", "warmup_scale"]
