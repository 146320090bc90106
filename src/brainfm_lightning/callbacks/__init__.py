"""Lightning callbacks."""

from brainfm_lightning.callbacks.prediction_writer import EmbeddingWriter
from brainfm_lightning.callbacks.summary import TrainingSummary
from brainfm_lightning.callbacks.vicreg_warmup import VICRegWarmup, warmup_scale

__all__ = ["EmbeddingWriter", "TrainingSummary", "VICRegWarmup", "warmup_scale"]
