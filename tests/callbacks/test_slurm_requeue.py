"""SlurmRequeue: the signal only sets a flag; checkpoint and requeue happen at the next training-batch boundary."""

import os
import signal
import subprocess

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from trainers import cpu_trainer

from brainfm_lightning.callbacks import SlurmRequeue
from brainfm_lightning.callbacks.slurm_requeue import next_hpc_checkpoint
from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules import MAEPretrainModule
from data_modules import ManifestDataModule

SLURM_VARIABLES = {"SLURM_JOB_ID": "4321", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                   "SLURM_NODEID": "0", "SLURM_JOB_NAME": "brainfm", "SLURM_NODELIST": "localhost"}


class SignalAtStep(L.Callback):
    """Sends the requeue signal to this process in the middle of a training batch and records what exists then."""

    def __init__(self, step: int, folder) -> None:
        self.step, self.folder, self.seen = step, folder, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
            self.seen = sorted(p.name for p in self.folder.glob("hpc_ckpt_*"))


def test_signal_checkpoints_at_the_batch_boundary_and_requeues(demo_manifest, tmp_path, monkeypatch):
    for key, value in SLURM_VARIABLES.items():
        monkeypatch.setenv(key, value)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kwargs: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    previous = signal.getsignal(signal.SIGUSR1)
    probe = SignalAtStep(step=1, folder=tmp_path)
    trainer = cpu_trainer(tmp_path, max_steps=5, limit_val_batches=0,
                          plugins=[SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)],
                          callbacks=[probe, SlurmRequeue()])
    module = MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1)
    trainer.fit(module, datamodule=ManifestDataModule(str(demo_manifest), spacing=4.0, crop_size=32, batch_size=1,
                                                      num_workers=0))
    assert probe.seen == []  # nothing written inside the signal handler
    checkpoint = torch.load(tmp_path / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2  # the step the signal arrived in, completed
    assert calls == [["scontrol", "requeue", "4321"]]
    assert trainer.global_step == 2  # stopped after checkpointing instead of training on
    assert signal.getsignal(signal.SIGUSR1) is previous  # handlers put back after training


def test_without_a_requeuing_slurm_environment_the_signal_handler_is_untouched(demo_manifest, tmp_path):
    previous = signal.getsignal(signal.SIGUSR1)
    seen = []

    class Look(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            seen.append(signal.getsignal(signal.SIGUSR1))

    trainer = cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[SlurmRequeue(), Look()])
    trainer.fit(MAEPretrainModule(ModalityMAE.from_preset("test"), warmup_steps=1),
                datamodule=ManifestDataModule(str(demo_manifest), spacing=4.0,
                                              crop_size=32, batch_size=1, num_workers=0))
    assert seen == [previous]


def test_next_hpc_checkpoint_numbers_after_the_highest(tmp_path):
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_1.ckpt"
    for name in ("hpc_ckpt_2.ckpt", "hpc_ckpt_10.ckpt", "hpc_ckpt_x.ckpt"):
        (tmp_path / name).write_bytes(b"")
    assert next_hpc_checkpoint(tmp_path).name == "hpc_ckpt_11.ckpt"
