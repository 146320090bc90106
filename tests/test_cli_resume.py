"""Exact resume through ``brainfm fit``: killed with SIGKILL after a checkpoint, resumed with ``--ckpt_path``.

The quickstart preset as shipped (its checkpoint callbacks, a worker process, the prepared cache), with its device
augmentation switched on, on the tiny demo set: 5 training sessions in batches of 2, so 3 steps an epoch and 6 in
two epochs. The run that is killed is a subprocess (a real SIGKILL; a hang fails on the timeout); the uninterrupted
and the resumed runs call the CLI's entry point in this process, which spares each the ~15 s of imports of a new
one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, assert_bitwise_equal

from brainfm_lightning import cli

TESTS = Path(__file__).parent
TOTAL_STEPS = 6  # 2 epochs of 3 batches
TIMEOUT_S = 240


def checkpoint_every(steps: int, path: Path) -> Path:
    """The quickstart's callbacks with its step checkpoint (``last.ckpt``) every ``steps`` steps instead of 20."""
    callbacks = yaml.safe_load((CONFIGS / "pretrain/quickstart.yaml").read_text())["trainer"]["callbacks"]
    (step_checkpoint,) = [c for c in callbacks if c.get("init_args", {}).get("every_n_train_steps")]
    step_checkpoint["init_args"]["every_n_train_steps"] = steps
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def fit_args(folder: Path, demo_root: Path, every: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / "pretrain/quickstart.yaml"), "--config", str(CONFIGS / "model/test.yaml"),
               "--config", str(every), "--data.root", str(demo_root), "--data.n_subjects", "6",
               "--data.demo_spacing", "4.0", "--data.num_workers", "1", "--data.batch_size", "2",
               "--data.augment", "true",  # the shipped device augmentation, off in the quickstart, on here
               "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(folder), *extra]


def launch(folder: Path, demo_root: Path, every: Path, *extra: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "brainfm"), *fit_args(folder, demo_root, every, *extra)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=folder, env=env, stdout=open(folder / "fit.log", "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, folder: Path) -> int:
    try:
        return process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"brainfm fit in {folder} did not end in {TIMEOUT_S} s:\n"
                    f"{(folder / 'fit.log').read_text()[-3000:]}")


def last_checkpoint(folder: Path) -> dict:
    (path,) = folder.rglob("last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=False)


def fit_here(folder: Path, demo_root: Path, every: Path, monkeypatch, *extra: str) -> dict:
    """``brainfm fit`` in this process; returns its final ``last.ckpt``."""
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    assert cli.main(fit_args(folder, demo_root, every, *extra)) == 0
    return last_checkpoint(folder)


def test_sigkill_mid_epoch_and_at_an_epochs_last_batch_resume_bitwise(demo_root, tmp_path, monkeypatch):
    every_4 = checkpoint_every(4, tmp_path / "every4.yaml")
    killed_dir = tmp_path / "killed"
    kill = '{"class_path": "crash_probe.KillAfterStep", "init_args": {"step": 4}}'
    every_step = ('{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "%s", '
                  '"every_n_train_steps": 1, "save_top_k": -1, "filename": "step{step}", '
                  '"auto_insert_metric_name": false}}' % (killed_dir / "steps"))
    killed = launch(killed_dir, demo_root, every_4, f"--trainer.callbacks+={kill}",
                    f"--trainer.callbacks+={every_step}")
    full = fit_here(tmp_path / "full", demo_root, every_4, monkeypatch)  # meanwhile, uninterrupted
    assert finish(killed, killed_dir) == -signal.SIGKILL

    assert full["global_step"] == TOTAL_STEPS  # last.ckpt is the final state, though step checkpoints fell on 4 only
    starts = {"mid_epoch": next(killed_dir.rglob("last.ckpt")),  # step 4: the second batch of epoch 1
              "epoch_end": killed_dir / "steps/step3.ckpt"}  # step 3: the last batch of epoch 0
    assert {name: torch.load(path, weights_only=False)["global_step"] for name, path in starts.items()} == {
        "mid_epoch": 4, "epoch_end": 3}
    for name, path in starts.items():
        final = fit_here(tmp_path / name, demo_root, every_4, monkeypatch, "--ckpt_path", str(path))
        assert final["global_step"] == TOTAL_STEPS
        assert_bitwise_equal(final["state_dict"], full["state_dict"], f"{name}: weights")
        assert_bitwise_equal(final["optimizer_states"], full["optimizer_states"], f"{name}: optimizer")
        assert_bitwise_equal(final["lr_schedulers"], full["lr_schedulers"], f"{name}: scheduler")
