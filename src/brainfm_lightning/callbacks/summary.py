"""Prints how the reconstruction loss moved and where the checkpoints are when ``fit`` ends."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override


class TrainingSummary(L.Callback):
    """Keeps the epoch mean of ``metric`` and prints first vs last epoch plus the checkpoint paths at the end.

    Args:
        metric: Epoch-level metric logged by the module.
    """

    def __init__(self, metric: str = "train/loss_mae_epoch") -> None:
        self.metric = metric
        self.history: list[tuple[int, float]] = []

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if value is not None:
            self.history.append((trainer.current_epoch, float(value)))

    @override
    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history:
            (first_epoch, first), (last_epoch, last) = self.history[0], self.history[-1]
            change = 100.0 * (first - last) / first if first else 0.0
            print(f"{self.metric}: epoch {first_epoch} {first:.4f} -> epoch {last_epoch} {last:.4f} "
                  f"({change:.1f}% lower)")
        for checkpoint in trainer.checkpoint_callbacks:
            if getattr(checkpoint, "last_model_path", ""):
                print(f"last checkpoint: {checkpoint.last_model_path}")
            if getattr(checkpoint, "best_model_path", "") and getattr(checkpoint, "monitor", None):
                print(f"best checkpoint ({checkpoint.monitor}): {checkpoint.best_model_path}")

    @override
    def state_dict(self) -> dict:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [tuple(item) for item in state_dict.get("history", [])]
