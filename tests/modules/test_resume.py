"""Exact resume: 2 epochs in one run equal 1 epoch, stop, and ``--ckpt_path last.ckpt`` to 2 epochs.

The interrupted run is configured exactly like the full one (``max_epochs 2``, so the cosine schedule has the
same length) and is stopped after its first epoch by a callback, as a preempted job would be.
"""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import assert_bitwise_equal, tiny_fit_args

from brainfm_lightning import cli


class StepRecorder(L.Callback):
    """What each training step saw: sessions, learning rate and the VICReg warm-up scale."""

    def __init__(self) -> None:
        self.steps: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # after VICRegWarmup set the scale
        self.steps[trainer.global_step] = {
            "sessions": list(batch["session_ids"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "regularizer_scale": pl_module.regularizer_scale,
        }


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


def fit(demo_root: Path, folder: Path, monkeypatch, *extra: str, stop_early: bool = False):
    """Run ``brainfm fit`` in ``folder``; returns the CLI object and the step records."""
    recorder, built = StepRecorder(), []

    class RecordingCLI(cli.BrainFMCLI):
        def before_fit(self) -> None:
            built.append(self)
            self.trainer.callbacks.extend([recorder] + ([StopAfterFirstEpoch()] if stop_early else []))

    folder.mkdir()
    monkeypatch.chdir(folder)  # relative logger / checkpoint folders of the preset land here
    monkeypatch.setattr(cli, "BrainFMCLI", RecordingCLI)
    args = tiny_fit_args(demo_root, "--data.batch_size", "2", "--trainer.max_epochs", "2",
                         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(folder),
                         *extra)
    assert cli.main(args) == 0
    return built[0], recorder.steps


def last_checkpoint(folder: Path) -> Path:
    (path,) = folder.rglob("last.ckpt")
    return path


@pytest.fixture(autouse=True)
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(demo_root, tmp_path, monkeypatch):
    full, full_steps = fit(demo_root, tmp_path / "full", monkeypatch)
    first, first_steps = fit(demo_root, tmp_path / "first", monkeypatch, stop_early=True)
    interrupted_at = first.trainer.global_step
    assert 0 < interrupted_at < full.trainer.global_step, "the first run did not stop after one epoch"
    resumed, resumed_steps = fit(demo_root, tmp_path / "resumed", monkeypatch,
                                 "--ckpt_path", str(last_checkpoint(tmp_path / "first")))

    # the same sessions, learning rates and warm-up scales at every step, before and after the resume
    assert sorted(first_steps) == list(range(interrupted_at))
    assert sorted(resumed_steps) == list(range(interrupted_at, full.trainer.global_step))
    assert first_steps | resumed_steps == full_steps
    assert resumed_steps[interrupted_at]["regularizer_scale"] > 0  # the ramp continued, it did not restart at 0
    assert resumed.model.regularizer_scale == full.model.regularizer_scale
    assert resumed.trainer.global_step == full.trainer.global_step == 2 * interrupted_at
    assert resumed.trainer.current_epoch == full.trainer.current_epoch == 2

    # weights, optimizer (AdamW moments and step counts) and scheduler of the live objects at the end
    assert_bitwise_equal(resumed.model.net.state_dict(), full.model.net.state_dict(), "net")
    optimizers = resumed.trainer.optimizers[0], full.trainer.optimizers[0]
    assert_bitwise_equal(optimizers[0].state_dict(), optimizers[1].state_dict(), "optimizer")
    (resumed_scheduler,), (full_scheduler,) = resumed.trainer.lr_scheduler_configs, full.trainer.lr_scheduler_configs
    assert_bitwise_equal(resumed_scheduler.scheduler.state_dict(), full_scheduler.scheduler.state_dict(), "scheduler")
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == full.trainer.optimizers[0].param_groups[0]["lr"]
