"""Test-only callback for runs in a subprocess: SIGKILL the process once a given step is done and checkpointed.

Loaded by ``brainfm fit`` through ``PYTHONPATH`` (``--trainer.callbacks+=crash_probe.KillAfterStep``).
"""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAfterStep(L.Callback):
    """SIGKILL at the first hook after global step ``step``: a checkpoint written at that step is on disk by then.

    Args:
        step: The global step after which to die.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def _kill_if_done(self, trainer: L.Trainer) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        self._kill_if_done(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kill_if_done(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._kill_if_done(trainer)
