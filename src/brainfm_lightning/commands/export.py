"""``brainfm export``: a trained checkpoint's network as a folder that loads with ``from_pretrained``, no Lightning."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from brainfm_lightning.models.hub import HubMixin

if TYPE_CHECKING:
    from brainfm_lightning.models import ModalityMAE, ModalityUNETR

_EXIT_BAD_INPUT = 2
_COMPILE_PREFIX = "_orig_mod."  # torch.compile's wrapper puts this before the wrapped module's keys
SUPPORTED = "MAEPretrainModule (brainfm fit with a pretrain config) or SegmentationModule (a fine-tuned segmenter)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command; it sets ``func`` returning an exit status.

    Args:
        subparsers: The command group of the ``brainfm`` tool parser.
    """
    export = subparsers.add_parser(
        "export", help="Write a checkpoint's network as config.json + model.safetensors (from_pretrained, the Hub).",
        description="Write the network of a pretraining (ModalityMAE) or fine-tuned segmentation (ModalityUNETR) "
                    "checkpoint to --out as config.json (every constructor argument), model.safetensors, the "
                    "modality table (modality_table.safetensors) and a model card (README.md). The folder loads "
                    "with ModalityMAE.from_pretrained(DIR) or ModalityUNETR.from_pretrained(DIR), without "
                    "Lightning and without pickle; upload it with `hf upload USER/NAME DIR`. "
                    "Exit status: 0 written, 2 bad input.",
        epilog="example: brainfm export --ckpt runs/quickstart/csv/version_0/checkpoints/last.ckpt "
               "--out exports/quickstart --data-source 'SYNTHETIC demo data (brainfm data demo)'")
    export.add_argument("--ckpt", required=True, metavar="CKPT", help="Checkpoint written by brainfm fit.")
    export.add_argument("--out", required=True, metavar="DIR", help="Output folder; must be new or empty.")
    export.add_argument("--data-source", default=None, metavar="TEXT",
                        help="What the network was trained on, for the model card (e.g. 'FOMO25, 11,187 subjects').")
    export.set_defaults(func=run_export)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's entries, read with ``weights_only=True``; errors name the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"cannot read checkpoint {path}: {' '.join(str(error).split())[:300]}") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ValueError(f"{path} is not a Lightning checkpoint (no state_dict); export needs one of {SUPPORTED}")
    return checkpoint


def net_config(checkpoint: Mapping[str, Any], path: str | Path) -> dict[str, Any]:
    """The ``ModalityMAE`` arguments of a checkpoint.

    Args:
        checkpoint: The checkpoint's entries.
        path: Its file, for the message.

    Returns:
        Its ``net_config`` entry, else the ``net`` hyperparameter that ``brainfm fit`` (LightningCLI) saved as
        ``class_path``/``init_args``; ``positions: crop`` where it does not say (older checkpoints).

    Raises:
        ValueError: Neither is there (the message names ``path``).
    """
    before_positions = {"positions": "crop"}  # checkpoints written before ``positions`` existed used the crop's grid
    if isinstance(checkpoint.get("net_config"), Mapping):
        return before_positions | dict(checkpoint["net_config"])
    net = (checkpoint.get("hyper_parameters") or {}).get("net")
    if isinstance(net, Mapping) and str(net.get("class_path", "")).endswith("ModalityMAE"):
        return before_positions | dict(net.get("init_args") or {})
    raise ValueError(f"{path} holds no network config (no 'net_config' entry and no 'net' hyperparameter with a "
                     "ModalityMAE class_path); export reads checkpoints written by brainfm fit")


def segmenter_from_hparams(hparams: Mapping[str, Any], encoder: ModalityMAE, path: str | Path) -> ModalityUNETR:
    """The segmentation network of a ``SegmentationModule`` checkpoint on ``encoder``, untrained.

    Args:
        hparams: The checkpoint's hyperparameters; ``brainfm fit`` saves the head as ``class_path``/``init_args``.
            Without a ``head`` (a module built in Python) the network is :class:`ModalityUNETR` with the
            ``num_classes``, ``feature_size`` and ``feature_layers`` hyperparameters that checkpoints written before
            the head was injected hold, else its defaults.
        encoder: The :class:`ModalityMAE` to build it on.
        path: The checkpoint, for messages.

    Raises:
        ValueError: The head's ``class_path`` does not name a :class:`ModalityUNETR`, or its arguments do not fit.
    """
    from brainfm_lightning.models import ModalityUNETR

    head = hparams.get("head")
    if head is None:
        legacy = ("num_classes", "feature_size", "feature_layers")
        return ModalityUNETR(encoder, **{k: hparams[k] for k in legacy if k in hparams})
    if isinstance(head, str):  # a class path without init_args
        head = {"class_path": head}
    class_path, init_args = str(head.get("class_path", "")), dict(head.get("init_args") or {})
    module_name, _, name = class_path.rpartition(".")
    try:
        network_class = getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        network_class = None
    if not (isinstance(network_class, type) and issubclass(network_class, ModalityUNETR)):
        raise ValueError(f"{path}: the head {class_path!r} is not a ModalityUNETR; export writes ModalityUNETR "
                         "segmenters")
    try:
        return network_class(encoder, **init_args)
    except TypeError as error:
        raise ValueError(f"{path}: the head's init_args {init_args} do not fit {class_path}: {error}") from error


def network_from_checkpoint(path: str | Path) -> tuple[HubMixin, dict[str, Any]]:
    """Rebuild a checkpoint's network with its weights (strictly) and modality table.

    Returns:
        The :class:`ModalityMAE` (pretraining) or :class:`ModalityUNETR` (segmentation) in evaluation mode, and the
        checkpoint's entries.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Unreadable or unsupported checkpoint, or weights that do not fit its config (named).
    """
    from brainfm_lightning.modalities import ModalityTable
    from brainfm_lightning.models import ModalityMAE

    checkpoint = read_checkpoint(path)
    state = {k.replace(_COMPILE_PREFIX, ""): v for k, v in checkpoint["state_dict"].items()}
    hparams = checkpoint.get("hyper_parameters") or {}
    if any(k.startswith("segmenter.") for k in state):
        prefix = "segmenter."
        network: HubMixin = segmenter_from_hparams(hparams, ModalityMAE(**net_config(checkpoint, path)), path)
    elif state and all(k.startswith("net.") for k in state):
        prefix = "net."
        network = ModalityMAE(**net_config(checkpoint, path))
    else:
        trained_as = hparams.get("_class_path", "a module")
        raise ValueError(f"{path} holds {trained_as} with weights {sorted(state)[:5]}...; export supports "
                         f"{SUPPORTED} checkpoints")
    network.load_weights({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, str(path))
    if checkpoint.get("modality_table") is not None:
        network.modality_table = ModalityTable.from_state(checkpoint["modality_table"])
    return network.eval(), checkpoint  # type: ignore[attr-defined]


def export_checkpoint(path: str | Path, out: str | Path, data_source: str | None = None) -> HubMixin:
    """Write the network of checkpoint ``path`` to the folder ``out`` (see ``brainfm export --help``).

    Raises:
        FileNotFoundError: No file at ``path``.
        FileExistsError: ``out`` is a file or a folder that holds files.
        ValueError: Unreadable or unsupported checkpoint (named).
    """
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise FileExistsError(f"--out {out} is not an empty folder; choose a new one so no file of another export "
                              "stays next to these weights")
    network, checkpoint = network_from_checkpoint(path)
    card = {"training_steps": checkpoint.get("global_step"), "data_source": data_source}
    network.save_pretrained(out, model_card_kwargs=card)
    if checkpoint.get("preprocessing"):  # the spacing brainfm segment resamples new scans to
        (out / "preprocessing.json").write_text(json.dumps(checkpoint["preprocessing"], indent=1) + "\n")
    return network


def run_export(args: argparse.Namespace) -> int:
    """Run ``brainfm export``; returns the exit status (0 written, 2 bad input)."""
    try:
        network = export_checkpoint(args.ckpt, args.out, args.data_source)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"brainfm export: error: {error}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    files = ", ".join(sorted(p.name for p in Path(args.out).iterdir()))
    name = type(network).__name__
    print(f"wrote {args.out} ({files}); load it with {name}.from_pretrained({str(args.out)!r})")
    return 0
