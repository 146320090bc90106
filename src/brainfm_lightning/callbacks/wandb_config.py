"""LightningCLI's config, fully resolved, into the W&B run config (and, as always, ``config.yaml`` in the log dir)."""

from __future__ import annotations

from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves the run's config to the log dir and into every W&B run.

    Writes ``config.yaml`` to the log dir like :class:`SaveConfigCallback`, and puts the same resolved config
    (every default, ``class_path`` and override filled in) into ``logger.experiment.config`` of each
    :class:`WandbLogger`, so a W&B run can be searched and compared by any config value.

    Lightning calls :meth:`save_config` on rank 0 only.
    """

    def resolved_config(self) -> dict[str, Any]:
        """The config as LightningCLI would write it, as plain nested dicts and lists."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False))

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not wandb_loggers:
            return
        config = self.resolved_config()
        for logger in wandb_loggers:
            logger.experiment.config.update(config, allow_val_change=True)
