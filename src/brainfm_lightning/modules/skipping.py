"""Training batches with nothing to learn from: skipped by all ranks together or trained as a zero loss, and counted."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from typing_extensions import override

# Lightning warns whenever a module overrides a batch hook and a datamodule is passed; this one is meant to run
warnings.filterwarnings("ignore", message="You have overridden `on_before_batch_transfer` in `LightningModule`")


class SkippedBatchMixin(L.LightningModule):
    """Keeps the ranks of a DDP run stepping together when a batch holds nothing usable, and counts those batches.

    Two cases:

    - The loader yields ``None`` (every session of the batch was skipped as bad input). Lightning then calls no
      ``training_step`` on that rank, and under DDP the other ranks would wait in the gradient all-reduce for ever.
      Before the batch is transferred, the ranks agree (one boolean all-reduce): if any rank's batch is ``None``,
      every rank drops its batch and all skip the step together, through Lightning's own ``None`` path (no
      forward, no optimizer step; the learning-rate schedule still advances per batch).
    - A step finds nothing to learn from after its forward (a non-finite loss under a ``skip`` policy):
      :meth:`skipped_step_loss` is a zero loss through every trainable parameter, so the rank still takes part
      in the gradient all-reduce and adds zero to it.

    Both count in ``train/skipped_batches`` (batches dropped per epoch, summed over ranks: a step all ranks skip
    together counts once per rank) and in :attr:`skipped_batches` (this rank's). A zero-loss step is still an
    optimizer step: AdamW's weight decay and moments advance as for a batch of zero gradients.
    The agreement runs in ``on_before_batch_transfer``; a datamodule overriding that hook takes it over.
    :meth:`log_training_loss` logs the loss of the steps that are taken, the same way for every module.
    """

    skipped_batches: int = 0  # of this process, since it started
    _is_step_skipped: bool = False

    @override
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self._trainer
        if trainer is None or not trainer.training:
            return batch
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(batch is None, all=False):
            return None  # some rank has nothing: all skip this step together
        return batch

    def skipped_step_loss(self) -> torch.Tensor:
        """Zero, through every trainable parameter: gradients of exactly zero, and every rank reaches the all-reduce.

        Returns:
            A scalar zero attached to the graph of all parameters with ``requires_grad``.
        """
        self._is_step_skipped = True
        loss = torch.zeros((), device=self.device)
        for param in self.parameters():
            if param.requires_grad:
                loss = loss + param.sum() * 0.0
        return loss

    def log_training_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``train/loss`` per step and ``train/loss_epoch`` (what ``TrainingSummary`` reports) per epoch.

        Args:
            loss: The step's loss.
            batch_size: Sessions in the batch.
        """
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=batch_size)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        is_skipped = batch is None or self._is_step_skipped
        self._is_step_skipped = False
        self.skipped_batches += int(is_skipped)
        # logged every step (0 or 1) by every rank, so the epoch-end sum over ranks pairs up
        self.log("train/skipped_batches", float(is_skipped), on_step=False, on_epoch=True, reduce_fx="sum",
                 sync_dist=True, batch_size=1)
