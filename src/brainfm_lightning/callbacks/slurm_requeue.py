"""Slurm auto-requeue that checkpoints at a step boundary all ranks agree on, not inside the signal handler."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override


def next_hpc_checkpoint(folder: str | Path) -> Path:
    """``hpc_ckpt_{N+1}.ckpt`` in ``folder``, N the highest there (0 if none); Lightning resumes from the highest."""
    numbers = [int(m.group(1)) for p in Path(folder).glob("hpc_ckpt_*.ckpt")
               if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))]
    return Path(folder) / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` takes: ``ARRAYJOB_TASK`` for array jobs, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected Slurm job id {job!r}")
    return job


class SlurmRequeue(L.Callback):
    """Makes ``SLURMEnvironment(auto_requeue=True)`` safe under DDP.

    Lightning's handler writes the checkpoint inside the signal handler, at whatever point each rank is: one rank
    can enter the checkpoint's collectives while another is inside a gradient all-reduce, and the job hangs until
    Slurm kills it, unrequeued. This callback replaces that handler once training starts: the signal only sets a
    flag; after every training batch the ranks agree on it (one boolean all-reduce), then all of them write
    ``hpc_ckpt_N.ckpt`` into ``default_root_dir`` together, rank 0 runs ``scontrol requeue``, and the restarted job
    resumes from that file as before. It does nothing unless the trainer runs under a ``SLURMEnvironment`` with
    ``auto_requeue``; ``brainfm fit`` adds it to every run.
    """

    def __init__(self) -> None:
        self.requested = False
        self._signum: int | None = None
        self._replaced: Any = None

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # where Lightning's signal connector looks too (single-device strategies have no cluster_environment)
        environment = trainer._accelerator_connector.cluster_environment
        if not (isinstance(environment, SLURMEnvironment) and environment.auto_requeue):
            return
        self.requested = False
        self._signum = int(environment.requeue_signal)
        # Lightning registered its own handler for this signal just before training started
        self._replaced = signal.signal(self._signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # nothing else: no IO and no collectives inside a signal handler

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._signum is None:
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):  # any rank received it
            return
        path = next_hpc_checkpoint(trainer.default_root_dir)
        rank_zero_info(f"Handling auto-requeue signal {self._signum} at global step {trainer.global_step}: "
                       f"saving {path}")
        for logger in trainer.loggers:
            logger.finalize("finished")
        trainer.save_checkpoint(path)
        self.requested = False
        trainer.should_stop = True  # if the requeue fails, end the run cleanly after this checkpoint
        if trainer.is_global_zero:
            job = slurm_job_id()
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                rank_zero_info(f"Requeued SLURM job: {job}")
            else:
                rank_zero_warn(f"Requeuing SLURM job {job} failed ({result.returncode}): {result.stderr.strip()}")

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._replaced)
            self._signum = None
