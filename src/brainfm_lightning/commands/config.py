"""Training configs as ``brainfm fit`` reads them: the LightningCLI subclass, and the loader the tool commands share."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, Namespace, set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.plugins.io import CheckpointIO

from brainfm_lightning.plugins import AtomicCheckpointIO

# omegaconf+ resolves ${...} after every config and override is merged, so `save_dir: ${trainer.default_root_dir}`
# follows --trainer.default_root_dir; absolute keys are read relative to the subcommand (fit/test/...)
PARSER_MODE = "omegaconf+"
CONFIG_OPTIONS = ("-c", "--config")


class ConfigurationError(Exception):
    """A config value that cannot work, found while building the model, data or trainer."""


def use_training_parsing_settings() -> None:
    """Set jsonargparse's global settings the way every ``brainfm`` command parses training configs."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)


def parse_named_pairs(items: Iterable[str], option: str, form: str = "NAME=VALUE",
                      repeated: str = "names") -> dict[str, str]:
    """Read ``NAME=VALUE`` options (``--scan``, ``--unseen-name``) into a dict, both sides stripped, in order.

    Args:
        items: The option's values.
        option: The option, for messages (e.g. ``--scan``).
        form: How the option is written, for messages (e.g. ``NAME=PATH``).
        repeated: The verb of the message for a name given twice (``--unseen-name renames 'T1' twice``).

    Raises:
        ValueError: A malformed item or a repeated name, named in the message.
    """
    pairs: dict[str, str] = {}
    for item in items:
        name, is_pair, value = (part.strip() for part in item.partition("="))
        if not is_pair or not name or not value:
            raise ValueError(f"{option} wants {form}, got {item!r}")
        if name in pairs:
            raise ValueError(f"{option} {repeated} {name!r} twice")
        pairs[name] = value
    return pairs


def parse_set_overrides(items: Iterable[str]) -> list[tuple[str, str]]:
    """Split each ``KEY=VALUE`` of the tool commands' ``--set`` options at the first ``=``.

    Args:
        items: The ``--set`` values.

    Returns:
        ``(KEY, VALUE)`` pairs in order.

    Raises:
        ValueError: An item without ``=`` or with an empty key, named in the message.
    """
    pairs = []
    for item in items:
        key, is_pair, value = item.partition("=")
        if not is_pair or not key:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs


def extended_configs(config: str, chain: Sequence[Path] = ()) -> list[str]:
    """The config files that ``--config CONFIG`` stands for: the fragments its ``extends`` names, then itself.

    ``extends`` (a path or a list of paths, relative to the file) is read from the file's top level; each fragment
    is expanded the same way first, so a fragment may extend others. A value that is not a readable YAML file (a
    config given inline, a missing file) is returned as is, for jsonargparse to read or reject.

    Args:
        config: The value of a ``--config`` option.
        chain: The files that extend ``config``, outermost first (to find cycles).

    Returns:
        ``--config`` values in the order to apply them, ``config`` last.

    Raises:
        ConfigurationError: ``extends`` is not a path or a list of paths, names a file that does not exist, or
            leads back to a file that extends it (each named).
    """
    path = Path(config)
    try:
        content = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        content = None
    fragments = content.get("extends") if isinstance(content, dict) else None
    if fragments is None:
        return [config]
    fragments = [fragments] if isinstance(fragments, str) else fragments
    if not isinstance(fragments, list) or not all(isinstance(f, str) for f in fragments):
        raise ConfigurationError(f"{config}: extends must be a path or a list of paths, got {fragments!r}")
    chain = [*chain, path.resolve()]
    expanded = []
    for fragment in fragments:
        fragment_path = path.parent / fragment
        if not fragment_path.is_file():
            raise ConfigurationError(f"{config} extends {fragment}, but {fragment_path} does not exist")
        if fragment_path.resolve() in chain:
            cycle = " -> ".join(str(p) for p in [*chain, fragment_path.resolve()])
            raise ConfigurationError(f"{config} extends {fragment}, which leads back to it: {cycle}")
        expanded += extended_configs(str(fragment_path), chain)
    return [*expanded, config]


def with_extended_configs(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config FILE`` preceded by the fragments ``FILE`` extends (:func:`extended_configs`).

    Args:
        argv: Command-line arguments (``fit --config A.yaml --trainer.max_epochs 3 ...``).

    Returns:
        The arguments with ``--config FRAGMENT`` inserted before each file that extends ``FRAGMENT``: the file's own
        values then override the fragment's, and later arguments both.

    Raises:
        ConfigurationError: A bad ``extends`` (see :func:`extended_configs`), or ``--extends`` on the command line.
    """
    expanded: list[str] = []
    position = 0
    while position < len(argv):
        option, is_joined, joined = argv[position].partition("=")
        if option == "--extends":
            raise ConfigurationError("extends is a key of config files; on the command line give the fragment as "
                                     "--config FRAGMENT before the config that it should underlie")
        if option not in CONFIG_OPTIONS or (not is_joined and position + 1 == len(argv)):
            expanded.append(argv[position])
            position += 1
            continue
        config = joined if is_joined else argv[position + 1]
        expanded += [item for path in extended_configs(config) for item in ("--config", path)]
        position += 1 if is_joined else 2
    return expanded


def _applied_before_parsing(value: object) -> None:
    """The parsed value of ``extends``: none, as the fragments are applied before parsing.

    The parsed config already holds the fragments' values (:func:`with_extended_configs`), so a saved
    ``config.yaml`` runs again from any folder without reading them a second time.
    """
    return None


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


def command_line_model_keys(argv: Sequence[str]) -> list[str]:
    """The model options named on a command line, without the model's own ``init_args.``.

    ``--model.init_args.head.init_args.stem x`` and ``--model.head.init_args.stem=x`` both give
    ``head.init_args.stem``.
    """
    keys = []
    for token in argv:
        if isinstance(token, str) and token.startswith("--model."):
            key = token[len("--model."):].split("=", 1)[0]
            keys.append(key.removeprefix("init_args."))
    return keys


class BrainFMCLI(LightningCLI):
    """LightningCLI in omegaconf mode, with models and datamodules chosen by ``class_path``.

    Every run writes checkpoints atomically (:class:`AtomicCheckpointIO`, unless the config names another
    ``CheckpointIO``), and under Slurm logs to the job's run (:func:`pin_loggers_to_slurm_job`). A config file's
    top-level ``extends: FRAGMENT`` (paths relative to the file) applies ``FRAGMENT`` as a ``--config`` right before
    the file (:func:`with_extended_configs`). With ``--ckpt_path``, the checkpoint's hyperparameters rebuild the
    model over the config files, as LightningCLI does, but a ``--model.*`` option given on the command line keeps
    its value (LightningCLI 2.6 would silently replace it by the checkpoint's, :meth:`_parse_ckpt_path`).
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """As LightningCLI's, with the fragments each config file ``extends`` applied before it.

        Raises:
            ConfigurationError: A bad ``extends`` (named).
        """
        command_line = sys.argv[1:] if args is None else args
        self._model_options = command_line_model_keys(command_line if isinstance(command_line, list | tuple) else [])
        if args is None:  # the process's own arguments; LightningCLI warns about args only when given explicitly
            self.config = parser.parse_args(with_extended_configs(sys.argv[1:]))
        else:
            super().parse_arguments(parser, args if isinstance(args, dict | Namespace) else with_extended_configs(args))

    def _parse_ckpt_path(self) -> None:
        """Apply the checkpoint's hyperparameters (LightningCLI's), then restore the command line's ``--model.*``."""
        subcommand = self.config.get("subcommand")
        given = self.config.clone() if subcommand else None
        super()._parse_ckpt_path()
        if given is None:
            return
        for key in getattr(self, "_model_options", []):
            for full in (f"{subcommand}.model.init_args.{key}", f"{subcommand}.model.{key}"):
                if full in given:
                    self.config[full] = given[full]
                    break

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a constructor's ``ValueError`` becomes a :class:`ConfigurationError`.

        Raises:
            ConfigurationError: A constructor rejected a value, or ``data.crop_size`` differs from the network's.
        """
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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--save_modality_table`` and the ``extends`` key of config files."""
        parser.add_argument("--save_modality_table", type=str | None, default=None,
                            help="Also write the modality table to this .safetensors file at the end of fit.")
        parser.add_argument("--extends", type=_applied_before_parsing, default=None,
                            help="Config files only: fragments (a path or a list, relative to the file) read as"
                                 " --config right before it; applied before parsing, so the parsed config holds null.")

    def after_fit(self) -> None:
        """Write the modality table where ``--save_modality_table`` asks (rank 0)."""
        path = self.config.get(self.subcommand, {}).get("save_modality_table") if self.subcommand else None
        if path and self.trainer.is_global_zero:
            self.model.save_modality_table(path)


class _ToolCLI(BrainFMCLI):
    """:class:`BrainFMCLI` without subcommand and trainer: builds the model and data of training configs."""

    def __init__(self, *args: Any, with_model: bool, replace: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> None:
        self.with_model, self.replace = with_model, replace
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Also accept ``--ckpt_path`` and ``--weights_only``, so that the ``config.yaml`` a fit run saved parses."""
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Accepted so that the config.yaml a fit run saved parses; unused.")
        parser.add_argument("--weights_only", type=bool | None, default=None,
                            help="Accepted so that the config.yaml a fit run saved parses; unused.")

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """As LightningCLI's, but the model only required when it is built, and a missing data section named after."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.add_lightning_class_args(LightningModule, "model", subclass_mode=True, required=self.with_model)
        parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=False)

    def before_instantiate_classes(self) -> None:
        """Apply ``replace`` to the init_args that exist; leave the model out when it is not wanted."""
        for section, values in self.replace.items():
            init_args = (self.config.get(section) or Namespace()).get("init_args")
            for key, value in values.items():
                if init_args is not None and key in init_args:
                    init_args[key] = value
        if not self.with_model:
            self.config["model"] = None

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        """No trainer: the tools run their own loops."""
        return None


def build_from_configs(
    configs: Sequence[str | Path],
    overrides: Sequence[tuple[str, str]] = (),
    *,
    with_model: bool = True,
    replace: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[LightningModule | None, LightningDataModule]:
    """Build the model and datamodule of LightningCLI training configs exactly as ``brainfm fit`` does.

    The configs are composed left to right and parsed with the whole training parser (``omegaconf+``, so
    ``${trainer.default_root_dir}`` resolves), then ``overrides`` are applied as ``--KEY VALUE`` of ``brainfm fit``.
    No trainer is built.

    Args:
        configs: LightningCLI YAML files, composed left to right.
        overrides: ``(KEY, VALUE)`` pairs with full keys, e.g. ``("data.init_args.root", DIR)`` or ``("data.root",
            DIR)``; values are read as YAML.
        with_model: Build the model too (its section is then required); otherwise it is parsed if present, not built.
        replace: ``{section: {init_arg: value}}`` set after parsing where the section's init_args hold that key
            (e.g. ``{"model": {"pretrained": None}}``).

    Returns:
        The model (``None`` without ``with_model``) and the datamodule.

    Raises:
        FileNotFoundError: A config file does not exist (named).
        ValueError: A value jsonargparse or a constructor rejects, or no ``data`` section (named).
    """
    for config in configs:
        if not Path(config).is_file():
            raise FileNotFoundError(f"config not found: {config}")
    args = [item for config in configs for item in ("--config", str(config))]
    for key, value in overrides:
        args += [f"--{key.removeprefix('--')}", value]
    use_training_parsing_settings()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # tools have their own argv
            cli = _ToolCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                           save_config_callback=None, args=args, run=False, seed_everything_default=False,
                           parser_kwargs={"parser_mode": PARSER_MODE, "exit_on_error": False},
                           auto_configure_optimizers=False, with_model=with_model, replace=replace or {})
    except (ArgumentError, ConfigurationError) as error:
        raise ValueError(" ".join(str(error).split())) from error
    if cli.datamodule is None:
        raise ValueError(f"no 'data:' section (class_path + init_args) in {', '.join(map(str, configs))}")
    return cli.model, cli.datamodule
