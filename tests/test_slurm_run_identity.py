"""A requeued Slurm job continues its run: the same logger version / W&B id, folder and best-checkpoint bookkeeping."""

import signal
import subprocess
import warnings

import lightning as L
import pytest
import torch
import wandb
from conftest import CONFIGS, tiny_fit_args
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from brainfm_lightning import cli
from brainfm_lightning.commands.config import pin_loggers_to_slurm_job

SLURM_VARIABLES = {"SLURM_JOB_ID": "4321", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                   "SLURM_NODEID": "0", "SLURM_JOB_NAME": "brainfm", "SLURM_NODELIST": "localhost"}


def logger(class_path: str, **init_args) -> Namespace:
    return Namespace(class_path=f"lightning.pytorch.loggers.{class_path}", init_args=Namespace(**init_args))


def test_loggers_get_the_job_id_as_version_or_run_id(monkeypatch):
    for key, value in SLURM_VARIABLES.items():
        monkeypatch.setenv(key, value)
    configs = {
        "csv": Namespace(logger=logger("CSVLogger", save_dir="runs")),
        "kept": Namespace(logger=logger("CSVLogger", save_dir="runs", version="mine")),
        "both": Namespace(logger=[logger("TensorBoardLogger", save_dir="tb"), logger("WandbLogger", project="p")]),
        "default": Namespace(logger=None, default_root_dir="/runs/x"),
        "off": Namespace(logger=False),
    }
    for config in configs.values():
        pin_loggers_to_slurm_job(config)
    assert configs["csv"].logger.init_args.version == 4321
    assert configs["kept"].logger.init_args.version == "mine"
    assert [configs["both"].logger[0].init_args.version, configs["both"].logger[1].init_args.id] == [4321, "4321"]
    assert configs["default"].logger.class_path == "lightning.pytorch.loggers.CSVLogger"  # no TensorBoard here
    assert dict(configs["default"].logger.init_args) == {"save_dir": "/runs/x", "version": 4321}
    assert configs["off"].logger is False

    monkeypatch.delenv("SLURM_JOB_ID")
    outside = Namespace(logger=logger("CSVLogger", save_dir="runs"))
    pin_loggers_to_slurm_job(outside)
    assert "version" not in outside.logger.init_args


class SignalAtStep(L.Callback):
    """Sends the requeue signal to this process during the given step, as ``scancel --signal=USR1`` would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            signal.raise_signal(signal.SIGUSR1)


def test_a_requeued_job_continues_the_wandb_run_folder_and_best_checkpoint(demo_root, tmp_path, monkeypatch):
    for key, value in SLURM_VARIABLES.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    requeues, run = [], subprocess.run

    def scontrol_succeeds(command, **kwargs):  # everything else (W&B asks git) runs as usual
        if command[0] != "scontrol":
            return run(command, **kwargs)
        requeues.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", scontrol_succeeds)
    seen = []

    class ObservingCLI(cli.BrainFMCLI):
        def before_fit(self) -> None:
            if not requeues and not seen:  # the first start: preempted during the 5th step
                self.trainer.callbacks.append(SignalAtStep(4))

        def after_fit(self) -> None:
            (best,) = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
            seen.append({"id": self.trainer.logger.experiment.id, "dirpath": best.dirpath,
                         "best_score": best.best_model_score, "step": self.trainer.global_step,
                         "weights": {k: v.clone() for k, v in self.model.state_dict().items()}})
            wandb.finish()

    monkeypatch.setattr(cli, "BrainFMCLI", ObservingCLI)
    args = tiny_fit_args(demo_root, "--config", str(CONFIGS / "trainer/slurm.yaml"),
                         "--config", str(CONFIGS / "logger/wandb.yaml"), "--data.batch_size", "2",
                         "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1",
                         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
                         "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"))
    assert cli.main(args) == 0
    assert requeues == [["scontrol", "requeue", "4321"]] and (tmp_path / "run/hpc_ckpt_1.ckpt").is_file()
    hpc = torch.load(tmp_path / "run/hpc_ckpt_1.ckpt", map_location="cpu", weights_only=False)
    (saved_best,) = [state["best_model_score"] for key, state in hpc["callbacks"].items()
                     if key.startswith("ModelCheckpoint") and state["monitor"] == "val/loss_mae"]
    assert saved_best is not None  # epoch 0 was validated before the preemption

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    restored = []
    monkeypatch.setattr(ModelCheckpoint, "on_train_start", lambda self, trainer, module: restored.append(
        (self.monitor, self.best_model_score)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(args) == 0  # resumes from hpc_ckpt_1.ckpt, as the requeued job does
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]

    first, second = seen
    assert first["step"] == 5 and second["step"] == 9  # the signal came during the 5th step
    assert first["id"] == second["id"] == "4321" and first["dirpath"] == second["dirpath"]
    assert ("val/loss_mae", saved_best) in restored  # the best-k bookkeeping came back with the run
    assert torch.is_tensor(second["best_score"]) and second["best_score"] <= saved_best
    runs = sorted(p.name for p in (tmp_path / "runs/wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith("-4321") for name in runs)

    # the resume from hpc_ckpt_1.ckpt (in the middle of epoch 1) ends where an uninterrupted run does, bitwise
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    reference = [*args, "--trainer.default_root_dir", str(tmp_path / "reference"),
                 "--trainer.logger.init_args.save_dir", str(tmp_path / "reference_runs")]
    assert cli.main(reference) == 0 and seen[2]["step"] == 9
    assert all(torch.equal(seen[2]["weights"][k], v) for k, v in second["weights"].items())


@pytest.fixture(autouse=True)
def keep_sigusr1_handler():
    previous = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, previous)
