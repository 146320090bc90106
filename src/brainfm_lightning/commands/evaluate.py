"""``brainfm evaluate robustness``: score a trained segmenter on every subset of each test session's modalities."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from brainfm_lightning.commands.config import (
    ConfigurationError,
    build_from_configs,
    parse_named_pairs,
    parse_set_overrides,
)

_EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``robustness`` subcommand; it sets ``func`` returning an exit status.

    Args:
        subparsers: The group returned by ``add_subparsers()`` of the ``evaluate`` parser.
    """
    robustness = subparsers.add_parser(
        "robustness",
        help="Dice/HD95 of a trained segmenter for every subset of each test session's modalities.",
        description="Build the model and datamodule from the training configs (as brainfm fit does), load the "
                    "checkpoint's weights, segment every test session once per non-empty subset of its modalities "
                    "(the others dropped) and write robustness.csv, robustness.md, robustness_cases.csv and "
                    "robustness.png to --out; the markdown table is also printed. Exit status: 0 done, 2 bad input.",
        epilog="example: brainfm evaluate robustness --config configs/finetune/seg_demo.yaml "
               "--ckpt_path runs/seg_demo/csv/version_0/checkpoints/last.ckpt --unseen-name FLAIR=T2-FLAIR-3D-SPACE",
    )
    robustness.add_argument("--config", action="append", required=True, metavar="CONFIG.yaml",
                            help="LightningCLI config the model was trained with; repeat to compose (later files "
                                 "override).")
    robustness.add_argument("--ckpt_path", "--ckpt-path", required=True, metavar="CKPT",
                            help="Checkpoint written by brainfm fit (e.g. .../checkpoints/last.ckpt).")
    robustness.add_argument("--out", default=None, metavar="DIR",
                            help="Output folder (default: <checkpoint folder>/robustness_<checkpoint name>).")
    robustness.add_argument("--unseen-name", action="append", default=[], metavar="OLD=NEW",
                            help="Show the model modality OLD under the name NEW (e.g. FLAIR=T2-FLAIR-3D-SPACE), one "
                                 "it never saw in training; BrainFM embeds it with its text encoder, a fixed-channel "
                                 "U-Net cannot use it. Subsets holding OLD are reported as NEW. Repeatable.")
    robustness.add_argument("--max-missing", type=int, default=None, metavar="K",
                            help="Only the subsets lacking at most K of a session's modalities (1: the full set and "
                                 "each one left out; default: every subset).")
    robustness.add_argument("--min-lesion-ml", type=float, default=0.0, metavar="ML",
                            help="Post-processing: clear predicted lesions (26-connected) smaller than ML millilitres "
                                 "before scoring, as brainfm segment --min-lesion-ml does (default: 0, keep all).")
    robustness.add_argument("--limit", type=int, default=None, metavar="N",
                            help="Evaluate the first N test batches only (default: all).")
    robustness.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                            help="Override a config value, as --KEY VALUE does for brainfm fit (e.g. "
                                 "--set data.init_args.root=data/demo); repeatable.")
    robustness.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                            help="Where to run the model (default: %(default)s, a GPU when there is one).")
    robustness.set_defaults(func=run_robustness)
    reconstruction = subparsers.add_parser(
        "reconstruction",
        help="Masked-patch error of a pretrained MAE beside an average-brain template, and with names rotated.",
        description="Build the pretraining model and datamodule from the training configs, load the checkpoint's "
                    "weights and score, on the same masked patches of every validation session (centred crops, "
                    "--seeds mask draws each): the network's reconstruction, the template (the mean training patch "
                    "of the same sequence at the same grid position), zeros, and the network with each session's "
                    "sequence names rotated (tells whether the modality embedding is used). Prints a markdown "
                    "table and writes reconstruction.json and reconstruction.png (original, masked input and "
                    "reconstruction of the validation session with the most sequences) to --out. Exit status: 0 "
                    "done, 2 bad input.",
        epilog="example: brainfm evaluate reconstruction --config configs/pretrain/quickstart.yaml "
               "--ckpt_path runs/quickstart/lightning_logs/version_0/checkpoints/last.ckpt")
    reconstruction.add_argument("--config", action="append", required=True, metavar="CONFIG.yaml",
                                help="LightningCLI pretraining config; repeat to compose (later files override).")
    reconstruction.add_argument("--ckpt_path", "--ckpt-path", required=True, metavar="CKPT",
                                help="Pretraining checkpoint written by brainfm fit.")
    reconstruction.add_argument("--out", default=None, metavar="DIR",
                                help="Output folder (default: the checkpoint's folder).")
    reconstruction.add_argument("--seeds", type=int, default=5, metavar="N",
                                help="Mask draws per session (default: %(default)s).")
    reconstruction.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                                help="Override a config value, as --KEY VALUE does for brainfm fit; repeatable.")
    reconstruction.set_defaults(func=run_reconstruction)


def _fail(message: str, command: str = "robustness") -> int:
    print(f"brainfm evaluate {command}: error: {message}", file=sys.stderr)
    return _EXIT_BAD_INPUT


def parse_renames(pairs: Sequence[str]) -> dict[str, str]:
    """``["OLD=NEW", ...]`` -> ``{OLD: NEW}``; raises ``ValueError`` naming a malformed or repeated pair."""
    return parse_named_pairs(pairs, "--unseen-name", "OLD=NEW", repeated="renames")


def check_renames(renames: Mapping[str, str], known: Sequence[str]) -> None:
    """Raise ``ValueError`` when an OLD name is not a modality of the data, or a NEW name already is one."""
    unknown = [old for old in renames if old not in known]
    if unknown:
        raise ValueError(f"--unseen-name: modality {', '.join(map(repr, unknown))} is not in the data "
                         f"(modalities: {list(known)})")
    taken = [new for new in renames.values() if new in known]
    if taken:
        raise ValueError(f"--unseen-name: {', '.join(map(repr, taken))} is already a modality of the data, not an "
                         "unseen name")


def renamed_batches(batches: Iterable[Mapping[str, Any] | None], renames: Mapping[str, str],
                    device: torch.device, limit: int | None = None) -> Iterator[dict[str, Any] | None]:
    """The first ``limit`` batches, modality names renamed and tensors moved to ``device`` (``None`` kept)."""
    for index, batch in enumerate(batches):
        if limit is not None and index >= limit:
            return
        if batch is None:
            yield None
            continue
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        moved["modalities"] = [[renames.get(n, n) for n in row] for row in batch["modalities"]]
        yield moved


def load_trained(configs: Sequence[str], ckpt_path: str, overrides: Sequence[str] = (),
                 with_label: bool = True) -> tuple[Any, Any]:
    """Build the model and datamodule of training ``configs`` and load the weights of ``ckpt_path`` into the model.

    The two are built as ``brainfm fit`` builds them (:func:`~brainfm_lightning.commands.config.build_from_configs`),
    except that ``model.pretrained`` is cleared (the checkpoint holds every weight) and ``data.with_label`` is set;
    the checkpoint's modality table is loaded before its weights.

    Args:
        configs: LightningCLI YAML files, composed left to right.
        ckpt_path: A checkpoint of the same model class and sizes.
        overrides: ``KEY=VALUE`` pairs, as ``--KEY VALUE`` of ``brainfm fit`` (e.g. ``data.init_args.root=DIR``).
        with_label: Set ``data.with_label`` and require label masks (segmentation).

    Raises:
        FileNotFoundError: A config or the checkpoint does not exist (named).
        ValueError: Bad override, bad config value, or a checkpoint of another model class or size (named).

    Returns:
        The LightningModule, with the checkpoint's weights, and the datamodule.
    """
    for path in [*configs, ckpt_path]:  # every missing file before the slow model build
        if not Path(path).is_file():
            raise FileNotFoundError(f"{'checkpoint' if path == ckpt_path else 'config'} not found: {path}")
    replace: dict[str, dict[str, Any]] = {"model": {"pretrained": None}}
    if with_label:
        replace["data"] = {"with_label": True}
    module, datamodule = build_from_configs(configs, parse_set_overrides(overrides), replace=replace)
    if with_label and getattr(datamodule, "with_label", True) is not True:
        raise ValueError(f"{type(datamodule).__name__} serves no label masks; robustness needs them")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files that are not checkpoints
        raise ValueError(f"cannot read checkpoint {ckpt_path}: {' '.join(str(error).split())[:300]}") from error
    trained_as = checkpoint.get("hyper_parameters", {}).get("_class_path")
    built_as = f"{type(module).__module__}.{type(module).__qualname__}"
    if trained_as and trained_as.rsplit(".", 1)[-1] != type(module).__qualname__:
        raise ValueError(f"{ckpt_path} holds a {trained_as} but the configs build a {built_as}")
    try:
        module.on_load_checkpoint(checkpoint)  # the modality table (or channel list) before the weights
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{ckpt_path} does not fit the model of the configs (pass the --set overrides the "
                         f"training used): {' '.join(str(error).split())[:800]}") from error
    return module, datamodule


def run_robustness(args: argparse.Namespace) -> int:
    """Run ``brainfm evaluate robustness``.

    Args:
        args: The parsed options of the command.

    Returns:
        The exit status: 0 done, 2 bad input.
    """
    from brainfm_lightning.evaluation.robustness import evaluate_modality_subsets, markdown_table
    from brainfm_lightning.modalities.encoder import TextEncoderUnavailableError

    try:
        renames = parse_renames(args.unseen_name)
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.max_missing is not None and args.max_missing < 0:
            raise ValueError(f"--max-missing must be >= 0, got {args.max_missing}")
        if not args.min_lesion_ml >= 0:
            raise ValueError(f"--min-lesion-ml must be >= 0, got {args.min_lesion_ml}")
        module, datamodule = load_trained(args.config, args.ckpt_path, args.overrides)
        if hasattr(datamodule, "modality_names"):
            check_renames(renames, datamodule.modality_names)
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    if args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda: no GPU available")
    is_gpu = args.device == "cuda" or args.device == "auto" and torch.cuda.is_available()
    device = torch.device("cuda" if is_gpu else "cpu")
    module.to(device).eval()
    spacing = module.hparams.get("voxel_spacing") or getattr(datamodule, "spacing", None)
    if spacing is None:
        print("note: HD95 is in voxels (no data.spacing or model.voxel_spacing)", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.ckpt_path).parent / f"robustness_{Path(args.ckpt_path).stem}"
    if getattr(module, "whole_volume_inference", False) and hasattr(datamodule, "whole_volumes"):
        datamodule.whole_volumes = True  # as brainfm test: whole volumes, scored against the mask files
    datamodule.setup("test")
    batches = renamed_batches(datamodule.test_dataloader(), renames, device, args.limit)
    try:
        summary = evaluate_modality_subsets(module, batches, out, module.num_classes, spacing or 1.0,
                                            args.max_missing, args.min_lesion_ml)
    except (ValueError, TextEncoderUnavailableError) as error:  # e.g. a name without a U-Net channel, no data
        return _fail(str(error))
    print(f"robustness of {args.ckpt_path} on the test split, per modality subset (written to {out}):")
    print(markdown_table(summary), end="")
    return 0


def run_reconstruction(args: argparse.Namespace) -> int:
    """Run ``brainfm evaluate reconstruction`` with parsed arguments; returns the exit status."""
    import json

    from brainfm_lightning.evaluation.reconstruction import masked_patch_errors, patch_template, write_montage

    try:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        module, datamodule = load_trained(args.config, args.ckpt_path, args.overrides, with_label=False)
        net = getattr(module, "net", None)
        if net is None or not hasattr(datamodule, "evaluation_dataloader"):
            raise ValueError("reconstruction needs a pretraining model (model.net) and a manifest-style datamodule")
        if module.hparams.get("norm_pix_loss"):
            raise ValueError("the checkpoint was trained with norm_pix_loss: its output is not in voxel units")
    except (FileNotFoundError, ValueError, ConfigurationError) as error:
        return _fail(str(error), "reconstruction")
    module.eval()
    template = patch_template(net, datamodule.evaluation_dataloader("train"))
    def embed(names: Sequence[Sequence[str]], like: torch.Tensor) -> torch.Tensor:
        return module.modality_embeddings(names, like=like)

    errors = masked_patch_errors(net, embed, datamodule.evaluation_dataloader("val"), template,
                                 seeds=range(args.seeds))
    out = Path(args.out) if args.out else Path(args.ckpt_path).parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "reconstruction.json").write_text(json.dumps(errors, indent=1) + "\n")
    montage = write_montage(net, embed, datamodule.evaluation_dataloader("val"), out / "reconstruction.png")
    print(f"masked-patch MSE on the validation sessions ({int(errors['patches'])} patches, {args.seeds} mask seeds; "
          f"z-scored voxels):")
    print("| model | template | zeros | names rotated | rotated / model |\n|---|---|---|---|---|")
    print(f"| {errors['model']:.3f} | {errors['template']:.3f} | {errors['zeros']:.3f} | {errors['names_rotated']:.3f} "
          f"| {errors['rotated_over_model']:.3f} |")
    print(f"wrote {out / 'reconstruction.json'} and {montage}")
    return 0
