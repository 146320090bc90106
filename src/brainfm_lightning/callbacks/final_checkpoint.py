"""``last.ckpt`` holds the state a fit ended with, whatever step the checkpoint cadence last fell on."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class FinalCheckpoint(L.Callback):
    """Makes ``last.ckpt`` the final state of every fit.

    At the end of fit, every ``ModelCheckpoint(save_last=...)`` whose last save was before the final step saves
    ``last.ckpt`` again (a 21-step run with ``every_n_train_steps: 20`` ends with ``last.ckpt`` at step 21, not 20).

    Lightning's own end-of-fit save only runs when the callback has saved nothing at all. ``brainfm fit`` adds this
    callback to every run.
    """

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            return
        # ModelCheckpoint's protected members, as its subclasses use them: when it last saved, and how it saves last
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last \
                    and callback._last_global_step_saved != trainer.global_step:
                callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
