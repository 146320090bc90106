"""Test-only callback run inside the Slurm job: what each rank saw, appended to ``rank{r}.jsonl`` as it happens.

Appended per event (not written once at the end) because a preempted run is killed after it requeues itself.
The job finds this module through ``PYTHONPATH`` (``--trainer.callbacks+=rank_probe.RankProbe``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist


class RankProbe(L.Callback):
    """Writes rank, world size, restart count, and the sessions and global step of every training batch.

    Args:
        out_dir: Folder of the ``rank{r}.jsonl`` files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def _write(self, trainer: L.Trainer, event: str, **fields: Any) -> None:
        record = {
            "event": event,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "dist_world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "slurm_procid": os.environ.get("SLURM_PROCID"),
            "global_step": trainer.global_step,
            **fields,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        environment = type(trainer._accelerator_connector.cluster_environment).__name__
        print(f"[rank-probe] rank {trainer.global_rank} of world {trainer.world_size}, restart "
              f"{os.environ.get('SLURM_RESTART_COUNT', '0')}, starts at global step {trainer.global_step}, "
              f"environment {environment}", flush=True)
        self._write(trainer, "train_start", ckpt_path=trainer.ckpt_path, environment=environment)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._write(trainer, "step", epoch=trainer.current_epoch, batch_idx=batch_idx,
                    sessions=list(batch["session_ids"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"[rank-probe] rank {trainer.global_rank} ends at global step {trainer.global_step}", flush=True)
        self._write(trainer, "train_end")
