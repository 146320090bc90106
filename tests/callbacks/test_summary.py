"""TrainingSummary: first vs last epoch of the reconstruction loss, and where the checkpoints are."""

from types import SimpleNamespace

import torch

from brainfm_lightning.callbacks import TrainingSummary


def test_prints_first_and_last_epoch_and_checkpoints(capsys):
    summary = TrainingSummary()
    for epoch, loss in enumerate([2.0, 1.5, 1.0]):
        trainer = SimpleNamespace(current_epoch=epoch, callback_metrics={"train/loss_mae_epoch": torch.tensor(loss)})
        summary.on_train_epoch_end(trainer, None)
    latest = SimpleNamespace(last_model_path="/run/last.ckpt", best_model_path="", monitor=None)
    best = SimpleNamespace(last_model_path="", best_model_path="/run/best.ckpt", monitor="val/loss_mae")
    summary.on_fit_end(SimpleNamespace(checkpoint_callbacks=[latest, best]), None)
    out = capsys.readouterr().out
    assert "epoch 0 2.0000 -> epoch 2 1.0000 (50.0% lower)" in out
    assert "last checkpoint: /run/last.ckpt" in out and "best checkpoint (val/loss_mae): /run/best.ckpt" in out


def test_history_survives_a_resume():
    summary = TrainingSummary()
    summary.history = [(0, 2.0)]
    restored = TrainingSummary()
    restored.load_state_dict(summary.state_dict())
    assert restored.history == [(0, 2.0)]
