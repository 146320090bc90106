"""The ``brainfm`` command: Lightning's ``fit/validate/test/predict`` plus the ``data`` and ``modalities`` tools."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from jsonargparse import Namespace, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import CheckpointIO

from brainfm_lightning.plugins import AtomicCheckpointIO

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
TOOL_GROUPS = ("data", "modalities", "evaluate", "segment", "export")

OVERVIEW = """usage: brainfm COMMAND [options]

Pretrain and transfer modality-conditioned 3D masked autoencoders for brain MRI.

Training (LightningCLI; configs compose left to right, every dotted key can be overridden):
  fit        train:            brainfm fit --config configs/pretrain/quickstart.yaml
  validate   validate a checkpoint
  test       test a checkpoint
  predict    predict with a checkpoint

Tools:
  data        demo | check | prepare     build the demo data, check a dataset, prepare the cache
  modalities  embed | similarity         modality text embeddings
  evaluate    robustness                 score a checkpoint on every subset of the modalities
  segment     --ckpt CKPT --scan NAME=PATH ... --out MASK.nii.gz
                                         one case's mask on its own grid, no config needed
  export      --ckpt CKPT --out DIR      a checkpoint's network as config.json + model.safetensors (from_pretrained)

Run `brainfm COMMAND --help` for the options of a command.
"""


class ConfigurationError(Exception):
    """A config value that cannot work, found while building the model, data or trainer."""


def pin_loggers_to_slurm_job(trainer_config: Namespace) -> None:
    """Under Slurm, tie the run's loggers to the job, so a requeued job continues the same run.

    A requeued job keeps its ``SLURM_JOB_ID``: CSV and TensorBoard loggers get it as ``version`` (the same
    ``version_<job>`` folder, and with it the same ``checkpoints/`` folder, whose ``ModelCheckpoint`` then restores
    its best-k bookkeeping), a W&B logger as ``id`` (Lightning's ``WandbLogger`` resumes an existing id). The default
    logger (none configured) becomes such a CSV logger unless TensorBoard is installed, which Lightning already pins.
    Versions and ids set in the config are kept; outside Slurm and in interactive allocations nothing changes.

    Args:
        trainer_config: The ``trainer`` section of the parsed config, changed in place.
    """
    job = SLURMEnvironment.job_id()
    if job is None:
        return
    logger = trainer_config.get("logger")
    if logger is None or logger is True:
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            return
        save_dir = trainer_config.get("default_root_dir") or os.getcwd()
        logger = Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=save_dir))
    for entry in logger if isinstance(logger, list) else [logger]:
        if not isinstance(entry, Namespace) or not entry.get("class_path"):
            continue
        init_args = entry.get("init_args") or Namespace()
        kind = entry["class_path"].rsplit(".", 1)[-1]
        if kind in ("CSVLogger", "TensorBoardLogger") and init_args.get("version") is None:
            init_args["version"] = job
        elif kind == "WandbLogger" and init_args.get("id") is None and init_args.get("version") is None:
            init_args["id"] = str(job)
        entry["init_args"] = init_args
    trainer_config["logger"] = logger


class BrainFMCLI(LightningCLI):
    """LightningCLI in omegaconf mode, with models and datamodules chosen by ``class_path``.

    Every run writes checkpoints atomically (:class:`AtomicCheckpointIO`, unless the config names another
    ``CheckpointIO``), and under Slurm logs to the job's run (:func:`pin_loggers_to_slurm_job`).
    """

    def instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config is not None and config.get("trainer") is not None:
            pin_loggers_to_slurm_job(config["trainer"])
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError) as error:  # constructors name the bad value; no traceback needed
            raise ConfigurationError(str(error)) from error
        if getattr(self, "trainer", None) is not None:  # tools build the model and data without one
            self._use_atomic_checkpoint_io()
        net, crop = getattr(self.model, "net", None), getattr(self.datamodule, "crop_size", None)
        if net is not None and crop is not None and tuple(crop) != tuple(net.img_size):
            raise ConfigurationError(f"data.crop_size {tuple(crop)} differs from the network's img_size "
                                     f"{tuple(net.img_size)} (model.net.init_args.img_size); set them equal")

    def _use_atomic_checkpoint_io(self) -> None:
        """:class:`AtomicCheckpointIO` unless the config's ``trainer.plugins`` name a ``CheckpointIO``."""
        config_init = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        plugins = (config_init or {}).get("trainer", {}).get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # Lightning's default, not a choice
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse's LightningArgumentParser
        parser.add_argument("--save_modality_table", type=str | None, default=None,
                            help="Also write the modality table to this .safetensors file at the end of fit.")

    def after_fit(self) -> None:
        path = self.config.get(self.subcommand, {}).get("save_modality_table") if self.subcommand else None
        if path and self.trainer.is_global_zero:
            self.model.save_modality_table(path)


def run_lightning(argv: Sequence[str] | None) -> None:
    """Run LightningCLI on ``argv`` (``None``: the process's own arguments)."""
    from brainfm_lightning.callbacks import FinalCheckpoint, LoggerSaveConfigCallback, SlurmRequeue

    # omegaconf+ resolves ${...} after every config and override is merged, so `save_dir: ${trainer.default_root_dir}`
    # follows --trainer.default_root_dir; absolute keys are read relative to the subcommand (fit/test/...)
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    BrainFMCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_callback=LoggerSaveConfigCallback,  # also into the W&B run config
        save_config_kwargs={"overwrite": True},
        args=None if argv is None else list(argv),
        auto_configure_optimizers=False,
        # appended to the configured callbacks: requeue on Slurm (no-op elsewhere), last.ckpt = the final state
        trainer_defaults={"callbacks": [SlurmRequeue(), FinalCheckpoint()]},
    )


def tool_parser() -> argparse.ArgumentParser:
    """``brainfm data ...`` and ``brainfm modalities ...``."""
    from brainfm_lightning.commands import export as export_command
    from brainfm_lightning.commands import segment as segment_command
    from brainfm_lightning.data import commands as data_commands
    from brainfm_lightning.evaluation import commands as evaluation_commands
    from brainfm_lightning.modalities import commands as modality_commands

    parser = argparse.ArgumentParser(prog="brainfm", description="BrainFM-Lightning tools.")
    groups = parser.add_subparsers(dest="group", required=True)
    data = groups.add_parser("data", help="Datasets: demo data, checks, preparation.",
                             description="Datasets: build the synthetic demo data, check a dataset for bad scans.")
    data_commands.register(data.add_subparsers(dest="command", required=True))
    modalities = groups.add_parser("modalities", help="Modality text embeddings.",
                                   description="Embed modality names with a text encoder and inspect the table.")
    modality_commands.register(modalities.add_subparsers(dest="command", required=True))
    evaluate = groups.add_parser("evaluate", help="Evaluate trained checkpoints.",
                                 description="Evaluate a trained checkpoint, e.g. its robustness to missing or "
                                             "unseen modalities.")
    evaluation_commands.register(evaluate.add_subparsers(dest="command", required=True))
    segment_command.register(groups)
    export_command.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brainfm`` console script."""
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(OVERVIEW)
        return 0
    if argv[0] in TOOL_GROUPS:
        args = tool_parser().parse_args(argv)
        return int(args.func(args) or 0)
    if argv[0] not in LIGHTNING_COMMANDS:
        print(f"brainfm: unknown command {argv[0]!r}\n\n{OVERVIEW}", file=sys.stderr)
        return 2
    try:
        run_lightning(argv if explicit else None)
    except ConfigurationError as error:
        print(f"brainfm {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
