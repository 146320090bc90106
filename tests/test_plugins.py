"""AtomicCheckpointIO: a run killed at random moments, again and again, always leaves a last.ckpt that loads."""

import multiprocessing
import os
import random
import signal
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from brainfm_lightning.plugins import AtomicCheckpointIO

KILLS = 15


class WideModel(L.LightningModule):
    """A 4 MB parameter, so that writing each checkpoint takes long enough for kills to land inside writes."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1024, 1024))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return (self.weight.mean() - batch.mean()) ** 2

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train_and_checkpoint_every_step(folder: str) -> None:
    """The child: resumes from last.ckpt if there is one and trains until killed, writing last.ckpt every step."""
    torch.set_num_threads(1)
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=-1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint], plugins=[AtomicCheckpointIO()],
                        default_root_dir=folder)
    last = os.path.join(folder, "last.ckpt")
    trainer.fit(WideModel(), ckpt_path=last if os.path.exists(last) else None)


def test_random_kills_never_leave_an_unloadable_last_checkpoint(tmp_path):
    context = multiprocessing.get_context("fork")  # the child starts at once, without a second import of torch
    rng = random.Random(0)
    last = tmp_path / "last.ckpt"
    steps, mid_write = [], 0
    for _ in range(KILLS):
        written_before = last.stat().st_mtime_ns if last.exists() else None
        child = context.Process(target=train_and_checkpoint_every_step, args=(str(tmp_path),))
        child.start()
        deadline = time.monotonic() + 60  # until this child has replaced last.ckpt once
        while (not last.exists() or last.stat().st_mtime_ns == written_before) and time.monotonic() < deadline:
            assert child.is_alive(), "the child died: it could not resume from last.ckpt"
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))  # a random moment: in a step, between writes or inside one
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=30)
        assert child.exitcode == -signal.SIGKILL
        mid_write += any(tmp_path.glob(".last.ckpt.*.partial"))
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)  # never torn
        assert checkpoint["state_dict"]["weight"].shape == (1024, 1024)
        steps.append(checkpoint["global_step"])
    print(f"{KILLS} kills, {mid_write} inside a write; last.ckpt at steps {steps}")
    assert steps == sorted(steps) and steps[0] >= 1  # each child resumed from what the previous one left


def test_the_cli_writes_checkpoints_atomically_unless_configured_otherwise(demo_root, tmp_path, monkeypatch):
    from conftest import tiny_fit_args

    from brainfm_lightning import cli

    built = []

    class InspectingCLI(cli.BrainFMCLI):
        def before_fit(self) -> None:
            built.append(type(self.trainer.strategy.checkpoint_io))
            self.trainer.should_stop = True

    monkeypatch.setattr(cli, "BrainFMCLI", InspectingCLI)
    monkeypatch.chdir(tmp_path)
    base = tiny_fit_args(demo_root, "--trainer.max_steps", "1", "--trainer.default_root_dir", str(tmp_path))
    assert cli.main(base) == 0
    assert cli.main([*base, "--trainer.plugins+=lightning.pytorch.plugins.io.TorchCheckpointIO"]) == 0
    assert built == [AtomicCheckpointIO, TorchCheckpointIO]


@pytest.mark.parametrize("name", ["last.ckpt", "epoch=1-step=2.ckpt"])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path, name):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / name)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, tmp_path / name)
    assert torch.load(tmp_path / name, weights_only=False) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
