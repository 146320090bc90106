"""The ``brainfm`` command: dispatches to Lightning's ``fit/validate/test/predict`` or to a tool group.

The commands themselves live in :mod:`brainfm_lightning.commands`; this module only assembles and dispatches them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning.pytorch import LightningDataModule, LightningModule

from brainfm_lightning.commands.config import (
    PARSER_MODE,
    BrainFMCLI,
    ConfigurationError,
    use_training_parsing_settings,
)

__all__ = ["BrainFMCLI", "ConfigurationError", "main", "run_lightning", "tool_parser"]

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
  evaluate    robustness | reconstruction   a segmenter on every subset of the modalities; a pretrained MAE
                                         against an average-brain template
  segment     --ckpt CKPT --scan NAME=PATH ... --out MASK.nii.gz
                                         one case's mask on its own grid, no config needed
  export      --ckpt CKPT --out DIR      a checkpoint's network as config.json + model.safetensors (from_pretrained)

Run `brainfm COMMAND --help` for the options of a command.
"""


def run_lightning(argv: Sequence[str] | None) -> None:
    """Run LightningCLI on ``argv``.

    Args:
        argv: ``fit|validate|test|predict`` and its options; ``None``: the process's own arguments.

    Raises:
        ConfigurationError: A config value that cannot work (named).
    """
    from brainfm_lightning.callbacks import FinalCheckpoint, LoggerSaveConfigCallback, SlurmRequeue

    use_training_parsing_settings()
    BrainFMCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": PARSER_MODE},
        save_config_callback=LoggerSaveConfigCallback,  # also into the W&B run config
        save_config_kwargs={"overwrite": True},
        args=None if argv is None else list(argv),
        auto_configure_optimizers=False,
        # appended to the configured callbacks: requeue on Slurm (no-op elsewhere), last.ckpt = the final state
        trainer_defaults={"callbacks": [SlurmRequeue(), FinalCheckpoint()]},
    )


def tool_parser() -> argparse.ArgumentParser:
    """The parser of the tool groups (``data``, ``modalities``, ``evaluate``, ``segment``, ``export``).

    Returns:
        The parser; each command sets ``func``, which takes the parsed arguments and returns an exit status.
    """
    from brainfm_lightning.commands import data as data_commands
    from brainfm_lightning.commands import evaluate as evaluation_commands
    from brainfm_lightning.commands import export as export_command
    from brainfm_lightning.commands import modalities as modality_commands
    from brainfm_lightning.commands import segment as segment_command

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
    """Entry point of the ``brainfm`` console script.

    Args:
        argv: The arguments after ``brainfm``; ``None``: the process's own.

    Returns:
        The exit status: 0 done, 2 bad command or config (tools: as each documents).
    """
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
