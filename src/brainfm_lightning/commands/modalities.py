"""``brainfm modalities embed`` / ``similarity`` subcommands (registered into an existing subparser group)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainfm_lightning.modalities.encoder import TextEncoder, TextEncoderUnavailableError
from brainfm_lightning.modalities.table import ModalityTable, build_table

__all__ = ["format_matrix", "register", "save_heatmap"]

_EXIT_BAD_INPUT = 2
# Errors that mean "bad input or missing resource": reported as one line, never a traceback.
_USER_ERRORS = (TextEncoderUnavailableError, OSError, ValueError, KeyError)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` and ``similarity`` subcommands; each sets ``func`` returning an exit status.

    Args:
        subparsers: The group returned by ``add_subparsers()`` of the ``modalities`` parser.
    """
    embed = subparsers.add_parser(
        "embed",
        help="embed modality names into a .safetensors modality table",
        description="Embed the description of each modality name with a frozen text encoder and write a "
        "modality table (.safetensors) that training and checkpoints can use without the encoder.",
        epilog="example: brainfm modalities embed --names T1w T1ce T2w FLAIR --out modalities.safetensors",
    )
    embed.add_argument(
        "--encoder",
        default="minilm",
        help="'minilm' (bundled), 'biobert' (local HF cache) or a local model folder (default: minilm)",
    )
    embed.add_argument("--names", nargs="+", required=True, metavar="NAME", help="modality names, e.g. T1w FLAIR")
    embed.add_argument("--out", required=True, type=Path, metavar="FILE.safetensors", help="output table file")
    embed.add_argument(
        "--descriptions",
        type=Path,
        metavar="FILE",
        help="YAML or JSON file mapping name -> text, overriding the built-in descriptions",
    )
    embed.set_defaults(func=_run_embed)

    sim = subparsers.add_parser(
        "similarity",
        help="print (and plot) the cosine similarity between modality embeddings",
        description="Print the cosine-similarity matrix of modality embeddings, read from a table file or\n"
        "computed with a text encoder, and optionally save it as an annotated heatmap PNG.\n"
        "--raw embeds the bare names, to see what the descriptions add.",
        epilog="examples: brainfm modalities similarity --names T1w T2w FLAIR PD --png sim.png\n"
        "          brainfm modalities similarity --table modalities.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = sim.add_mutually_exclusive_group()
    source.add_argument("--table", type=Path, metavar="FILE", help="modality table written by 'embed'")
    source.add_argument("--encoder", help="text encoder to embed --names with (default: minilm)")
    sim.add_argument(
        "--names",
        nargs="+",
        metavar="NAME",
        help="names to compare (required with --encoder; a subset of the table with --table)",
    )
    sim.add_argument("--png", type=Path, metavar="OUT.png", help="also save an annotated heatmap here")
    sim.add_argument(
        "--raw", action="store_true", help="embed the bare names instead of their descriptions (with --encoder only)"
    )
    sim.add_argument("--descriptions", type=Path, metavar="FILE", help="YAML or JSON name -> text overrides")
    sim.set_defaults(func=_run_similarity)


def _fail(command: str, message: str) -> int:
    print(f"brainfm modalities {command}: error: {message}", file=sys.stderr)
    return _EXIT_BAD_INPUT


def _load_descriptions(path: Path | None) -> dict[str, str] | None:
    """Read a name -> text mapping from YAML or JSON (YAML is a superset, JSON gets exact errors)."""
    if path is None:
        return None
    if not path.is_file():
        raise FileNotFoundError(f"descriptions file not found: {path}")
    raw = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import yaml

            data = yaml.safe_load(raw)
    except Exception as err:  # json/yaml parse errors have different types
        raise ValueError(f"cannot parse descriptions file {path}: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"descriptions file {path} must map names to texts (strings), got {type(data).__name__}")
    return data


def _run_embed(args: argparse.Namespace) -> int:
    try:
        if args.out.suffix != ".safetensors":
            raise ValueError(f"--out must end in .safetensors, got {args.out}")
        descriptions = _load_descriptions(args.descriptions)
        table = build_table(args.names, TextEncoder.from_name(args.encoder), descriptions)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.save(args.out)
    except _USER_ERRORS as err:
        return _fail("embed", _message(err))
    width = max(len(n) for n in table.names)
    print(f"encoder: {table.encoder_id}  dim: {table.dim}  names: {len(table)}")
    for name, text in zip(table.names, table.texts, strict=True):
        print(f"  {name:<{width}}  <- {text!r}")
    print(f"wrote {args.out}")
    return 0


def _run_similarity(args: argparse.Namespace) -> int:
    try:
        if args.table is not None:
            if args.raw or args.descriptions:
                raise ValueError("--raw/--descriptions need --encoder: a table's texts are already embedded")
            table = ModalityTable.load(args.table)
            names = list(dict.fromkeys(args.names)) if args.names else table.names
        else:
            if not args.names:
                raise ValueError("give --table FILE, or --names NAME [NAME ...] to embed with --encoder")
            encoder = TextEncoder.from_name(args.encoder or "minilm")
            names = list(dict.fromkeys(args.names))
            if args.raw:
                table = ModalityTable(names, encoder.encode(names), encoder.encoder_id, list(names))
            else:
                table = build_table(names, encoder, _load_descriptions(args.descriptions))
        matrix = table.cosine_similarity(names)
        if args.png is not None:
            args.png.parent.mkdir(parents=True, exist_ok=True)
            title = f"{table.encoder_id}{' (bare names)' if args.raw else ''}"
            save_heatmap(matrix, names, args.png, title=title)
    except _USER_ERRORS as err:
        return _fail("similarity", _message(err))
    print(f"cosine similarity ({table.encoder_id}{', bare names' if args.raw else ''}):")
    print(format_matrix(matrix, names))
    if args.png is not None:
        print(f"wrote {args.png}")
    return 0


def _message(err: BaseException) -> str:
    # KeyError's str() is the repr of its argument; unwrap so the line reads as plain text.
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def format_matrix(matrix: np.ndarray, names: Sequence[str], decimals: int = 2) -> str:
    """Render a square matrix as an aligned text table with names as row and column labels.

    Args:
        matrix: ``[k, k]`` values.
        names: ``k`` labels.
        decimals: Digits after the point.

    Returns:
        The table as a multi-line string.
    """
    width = max([len(n) for n in names] + [decimals + 3])
    lines = [" " * width + "".join(f" {n:>{width}}" for n in names)]
    for name, row in zip(names, matrix, strict=True):
        lines.append(f"{name:<{width}}" + "".join(f" {v:>{width}.{decimals}f}" for v in row))
    return "\n".join(lines)


def save_heatmap(matrix: np.ndarray, names: Sequence[str], path: Path, title: str = "") -> None:
    """Save an annotated cosine-similarity heatmap PNG (Agg canvas, no pyplot global state).

    Args:
        matrix: ``[k, k]`` similarities.
        names: ``k`` labels.
        path: Output PNG path.
        title: Figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = 1.5 + 0.7 * len(names)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=min(0.0, float(np.min(matrix))), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)), labels=list(names), rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=list(names))
    for i in range(len(names)):
        for j in range(len(names)):
            value = float(matrix[i, j])
            ax.text(
                j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color="black" if value > 0.6 else "white"
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="cosine similarity")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(str(path))
