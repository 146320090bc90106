"""``brainfm segment``: one case's lesion mask from a trained segmenter, as a NIfTI file on the input's own grid."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from brainfm_lightning.commands.config import parse_named_pairs
from brainfm_lightning.data.geometry import to_reference_space, write_like
from brainfm_lightning.data.io import ScanError, load_scan
from brainfm_lightning.data.preprocess import SessionPreprocessor

_EXIT_BAD_INPUT = 2
PREPROCESSING_FILE = "preprocessing.json"  # written by brainfm export next to config.json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` command; it sets ``func`` returning an exit status.

    Args:
        subparsers: The command group of the ``brainfm`` tool parser.
    """
    segment = subparsers.add_parser(
        "segment", help="Segment one case (any sequences, named) with a trained segmenter; writes a NIfTI mask.",
        description="Preprocess the given scans as training did (RAS, the checkpoint's spacing, the first scan's "
                    "grid, head z-score), predict the whole volume with sliding windows and write the label map "
                    "onto the first scan's own grid: the same shape, affine and qform/sform, uint8, so it overlays "
                    "that scan in ITK-SNAP or FSLeyes. Needs no training config; sequence names in the "
                    "checkpoint's modality table need no text encoder, others are embedded with --text-encoder. "
                    "Exit status: 0 written, 2 bad input.",
        epilog="example: brainfm segment --ckpt runs/seg_demo/csv/version_0/checkpoints/last.ckpt "
               "--scan FLAIR=flair.nii.gz --scan T1=t1.nii.gz --out lesions.nii.gz")
    segment.add_argument("--ckpt", required=True, metavar="CKPT_OR_DIR",
                         help="A segmentation checkpoint written by brainfm fit, or a folder from brainfm export.")
    segment.add_argument("--scan", action="append", required=True, metavar="NAME=PATH", dest="scans",
                         help="One sequence of the case and its name (e.g. FLAIR=flair.nii.gz); repeat for each. The "
                              "first is the reference grid of the output.")
    segment.add_argument("--out", required=True, metavar="OUT.nii.gz", help="The label map to write.")
    segment.add_argument("--probabilities", default=None, metavar="PROB.nii.gz",
                         help="Also write the foreground probability of each class (float32, one volume per class).")
    segment.add_argument("--overlay", default=None, metavar="PNG",
                         help="Also save a quick-look PNG: three slices of the first scan through the predicted "
                              "lesions, the mask in red.")
    segment.add_argument("--spacing", type=float, default=None, metavar="MM",
                         help="Resample to this spacing in mm (default: the spacing the checkpoint was trained at, "
                              "else 1.0).")
    segment.add_argument("--tta", action="store_true",
                         help="Flip test-time augmentation: average with the left-right mirrored prediction.")
    segment.add_argument("--min-lesion-ml", type=float, default=0.0, metavar="ML",
                         help="Post-processing: clear predicted lesions (26-connected components of the mask, on the "
                              "output grid) smaller than ML millilitres (default: 0, keep all). Choose it on "
                              "labelled cases outside your test set: brainfm evaluate robustness --min-lesion-ml "
                              "scores the same way.")
    segment.add_argument("--sw-batch-size", type=int, default=2, metavar="N",
                         help="Sliding windows per forward pass (default: %(default)s).")
    segment.add_argument("--sw-overlap", type=float, default=0.5, metavar="F",
                         help="Overlap of the sliding windows (default: %(default)s).")
    segment.add_argument("--text-encoder", default="minilm",
                         help="Embeds sequence names missing from the checkpoint's table (default: %(default)s).")
    segment.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                         help="Where to run the network (default: %(default)s, a GPU when there is one).")
    segment.set_defaults(func=run_segment)


def parse_scans(pairs: Sequence[str]) -> dict[str, Path]:
    """Parse ``["NAME=PATH", ...]`` into ``{NAME: PATH}``, in order.

    Raises:
        ValueError: A malformed or repeated pair (named).
    """
    return {name: Path(path) for name, path in parse_named_pairs(pairs, "--scan", "NAME=PATH").items()}


def load_segmenter(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load the :class:`ModalityUNETR` of a checkpoint or exported folder.

    Returns:
        The network (evaluation mode, with its modality table) and the preprocessing it was trained with (``{}``
        when the checkpoint predates that record).

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: Not a segmentation checkpoint or export (named).
    """
    from brainfm_lightning.commands.export import network_from_checkpoint
    from brainfm_lightning.models.seg_head import ModalityUNETR

    path = Path(path)
    if path.is_dir():
        network = ModalityUNETR.from_pretrained(path)
        recorded = path / PREPROCESSING_FILE
        return network, json.loads(recorded.read_text()) if recorded.is_file() else {}
    network, checkpoint = network_from_checkpoint(path)
    if not isinstance(network, ModalityUNETR):
        raise ValueError(f"{path} is a pretraining checkpoint; brainfm segment needs a fine-tuned segmenter")
    return network, dict(checkpoint.get("preprocessing") or {})


def modality_embeddings(network: torch.nn.Module, names: Sequence[str], text_encoder: str) -> torch.Tensor:
    """Look up ``[1, M, D]`` embeddings of ``names`` in the network's table.

    Names the table lacks are embedded with ``text_encoder``, which is loaded only then.

    Raises:
        ValueError: The table's width is not the network's ``modality_dim``.
    """
    from brainfm_lightning.modalities import ModalityTable, TextEncoder

    table: ModalityTable | None = getattr(network, "modality_table", None)
    if table is None:
        encoder = TextEncoder.from_name(text_encoder)
        table = ModalityTable(names=[], vectors=np.zeros((0, encoder.dim), np.float32), encoder_id=encoder.encoder_id,
                              texts=[])
    table.ensure(list(names), lambda: TextEncoder.from_name(text_encoder))
    expected = network.net.modality_dim
    if table.dim != expected:
        raise ValueError(f"modality table {table.encoder_id!r} has {table.dim}-d vectors but the network expects "
                         f"{expected}; use the text encoder the segmenter was trained with")
    return torch.from_numpy(np.stack([table.vector(n) for n in names]))[None]


@torch.no_grad()
def segment_case(
    network: torch.nn.Module,
    scans: Mapping[str, Path],
    spacing: float,
    flip_axes: Sequence[int] = (),
    sw_batch_size: int = 2,
    sw_overlap: float = 0.5,
    text_encoder: str = "minilm",
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Segment one case and map the result onto its first scan's own grid.

    Args:
        network: A :class:`ModalityUNETR` with its modality table.
        scans: Sequence name -> file, the first being the reference grid.
        spacing: The spacing in mm the scans are resampled to (the training spacing).
        flip_axes: Spatial axes of flip test-time augmentation.
        sw_batch_size: Sliding windows per forward pass.
        sw_overlap: Overlap of the sliding windows.
        text_encoder: Embeds names missing from the table.
        device: Where the network runs; the stitched output stays on the CPU.

    Returns:
        ``(labels, probabilities)``: uint8 ``[X, Y, Z]`` and float32 ``[num_classes, X, Y, Z]``.

    Raises:
        ScanError: A scan that cannot be used (named).
    """
    from brainfm_lightning.modules.segmentation import flip_averaged_probabilities, sliding_window_logits

    names = list(scans)
    volumes = {name: load_scan(path) for name, path in scans.items()}
    preprocessor = SessionPreprocessor(network.net.img_size, spacing)
    grid, _, affine = preprocessor.to_grid(volumes)
    images, _, affine = preprocessor.pad_to_crop(grid.numpy(), None, affine)
    network = network.to(device).eval()
    embeddings = modality_embeddings(network, names, text_encoder).to(device)
    present = torch.ones(1, len(names), dtype=torch.bool, device=device)

    def logits_of(volume: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        # the whole volume is the head's bounding box padded evenly: a window's place in it is its head offset
        def predictor(window: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
            n = window.shape[0]
            return network(window, embeddings.expand(n, -1, -1), present.expand(n, -1), places)

        return sliding_window_logits(volume, predictor, network.net.img_size, sw_batch_size, sw_overlap, "cpu",
                                     lattice=network.net.patch_size)  # windows where the training crops lay

    probabilities = flip_averaged_probabilities(logits_of, images[None].to(device), flip_axes)[0]
    reference = scans[names[0]]
    labels = to_reference_space(probabilities.argmax(0, keepdim=True).to(torch.uint8).numpy(), affine, reference)[0]
    native_probabilities = to_reference_space(probabilities.numpy(), affine, reference, is_label=False)
    return labels, np.clip(native_probabilities, 0.0, 1.0)


def run_segment(args: argparse.Namespace) -> int:
    """Run ``brainfm segment`` with parsed arguments.

    Returns:
        The exit status: 0 written, 2 bad input (the message names the file or value).
    """

    def fail(message: str) -> int:
        print(f"brainfm segment: error: {message}", file=sys.stderr)
        return _EXIT_BAD_INPUT

    try:
        scans = parse_scans(args.scans)
        if args.spacing is not None and args.spacing <= 0:
            raise ValueError(f"--spacing must be positive, got {args.spacing}")
        if args.sw_batch_size < 1 or not 0.0 <= args.sw_overlap < 1.0:
            raise ValueError(f"--sw-batch-size must be >= 1 and --sw-overlap in [0, 1), got {args.sw_batch_size} "
                             f"and {args.sw_overlap}")
        if not args.min_lesion_ml >= 0:
            raise ValueError(f"--min-lesion-ml must be >= 0, got {args.min_lesion_ml}")
        if not str(args.out).endswith((".nii", ".nii.gz")):
            raise ValueError(f"--out {args.out} must end with .nii or .nii.gz")
        network, preprocessing = load_segmenter(args.ckpt)
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    spacing = args.spacing or preprocessing.get("spacing") or 1.0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        labels, probabilities = segment_case(network, scans, float(spacing), (0,) if args.tta else (),
                                             args.sw_batch_size, args.sw_overlap, args.text_encoder, device)
    except (ScanError, ValueError) as error:  # a scan that cannot be used, or names the table cannot embed
        return fail(str(error))
    reference = scans[next(iter(scans))]
    if args.min_lesion_ml:
        from brainfm_lightning.evaluation.lesions import remove_small_lesions

        labels = remove_small_lesions(labels, nib.affines.voxel_sizes(nib.load(reference).affine), args.min_lesion_ml)
    write_like(labels, reference, args.out)
    if args.probabilities:
        write_like(probabilities[1:], reference, args.probabilities, dtype=np.float32)
    if args.overlay:
        from brainfm_lightning.evaluation.overlay import plot_overlay

        plot_overlay(reference, labels, args.overlay, title=f"{Path(args.out).name} over {reference.name}")
    counts = {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True) if k}
    print(f"wrote {args.out} ({labels.shape}, {spacing} mm preprocessing; voxels per label {counts or 'none'})")
    return 0
