"""Lightning callbacks."""

from brainfm_lightning.callbacks.final_checkpoint import FinalCheckpoint
from brainfm_lightning.callbacks.loop_timing import LoopTiming, StepTiming, is_logging_step
from brainfm_lightning.callbacks.prediction_writer import EmbeddingWriter, SegmentationWriter
from brainfm_lightning.callbacks.reconstruction_montage import ReconstructionMontage, collapse_metrics
from brainfm_lightning.callbacks.slurm_requeue import SlurmRequeue
from brainfm_lightning.callbacks.summary import TrainingSummary
from brainfm_lightning.callbacks.vicreg_warmup import VICRegWarmup, warmup_scale
from brainfm_lightning.callbacks.wandb_config import LoggerSaveConfigCallback

__all__ = [
    "EmbeddingWriter",
    "FinalCheckpoint",
    "LoggerSaveConfigCallback",
    "LoopTiming",
    "ReconstructionMontage",
    "SegmentationWriter",
    "SlurmRequeue",
    "StepTiming",
    "TrainingSummary",
    "VICRegWarmup",
    "collapse_metrics",
    "is_logging_step",
    "warmup_scale",
]
