"""Linear per-step warm-up of the variance/covariance weights (Eq. (4)'s lambdas)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from typing_extensions import override


def warmup_scale(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """Fraction of the target lambdas at optimizer ``step``: 0 at step 0, 1 from ``warmup_epochs`` on."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


class VICRegWarmup(L.Callback):
    """Ramps ``pl_module.regularizer_scale`` linearly from 0 to 1 over the first ``warmup_epochs`` epochs.

    The module multiplies its ``lambda_var`` and ``lambda_cov`` by this scale. The ramp is per optimizer step
    and follows ``trainer.global_step``, so a resumed run continues exactly where it stopped.

    Args:
        warmup_epochs: Epochs of the ramp (the paper's 5); 0 disables it.
        steps_per_epoch: Optimizer steps per epoch; ``None`` takes it from the trainer (needed for iterable
            datasets whose length Lightning cannot know).
    """

    def __init__(self, warmup_epochs: float = 5.0, steps_per_epoch: int | None = None) -> None:
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.warmup_epochs = warmup_epochs
        self.steps_per_epoch = steps_per_epoch

    def _steps_per_epoch(self, trainer: L.Trainer) -> int:
        if self.steps_per_epoch is not None:
            return self.steps_per_epoch
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError("VICRegWarmup needs steps_per_epoch for a dataloader without a length")
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        scale = warmup_scale(trainer.global_step, self._steps_per_epoch(trainer), self.warmup_epochs)
        pl_module.regularizer_scale = scale
