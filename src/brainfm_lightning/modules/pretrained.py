"""A pretraining checkpoint's encoder into a fine-tuning network: every encoder weight or a named error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainfm_lightning.models.pos_embed import interpolate_pos_embed
from brainfm_lightning.sizes import to_3tuple

EMBEDDING_PREFIXES = ("patch_embed.", "modality_proj.", "pos_embed")
COMPILE_PREFIX = "_orig_mod."  # what torch.compile's OptimizedModule puts before the wrapped module's keys
POS_EMBED_KEYS = ("pos_embed", "decoder_pos_embed")


def is_encoder_key(name: str) -> bool:
    """Whether a :class:`ModalityMAE` state-dict key is used by transfer (embeddings and encoder, not the decoder)."""
    return name.startswith(EMBEDDING_PREFIXES + ("encoder.",))


@dataclass
class LoadReport:
    """What :func:`load_pretrained` found: network keys loaded, absent, unknown to the net, or of another shape."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    modality_names: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"pretrained weights from {self.path}: {len(self.loaded)} tensors loaded, "
                f"{len(self.missing)} missing (kept at initialisation) {self.missing}, "
                f"{len(self.unexpected)} unexpected (ignored) {self.unexpected}, "
                f"{len(self.mismatched)} of another shape (kept at initialisation) {self.mismatched}, "
                f"positional embeddings interpolated to the crop: {self.interpolated or 'none'}; "
                f"modality table: {self.modality_names or 'none in the checkpoint'}")


def checkpoint_grid(checkpoint: dict[str, Any], tokens: int) -> tuple[int, int, int] | None:
    """The patch grid a checkpoint's positional embedding of ``tokens`` rows was trained on.

    From its ``net_config`` (``img_size // patch_size``) when that holds ``tokens`` positions, else the cube of
    ``tokens`` if it is one; ``None`` when neither fits.
    """
    config = checkpoint.get("net_config") or {}
    if "img_size" in config and "patch_size" in config:
        grid = tuple(i // p for i, p in zip(to_3tuple(config["img_size"], "img_size"),
                                             to_3tuple(config["patch_size"], "patch_size")))
        if math.prod(grid) == tokens:
            return grid  # type: ignore[return-value]
    side = round(tokens ** (1 / 3))
    return (side, side, side) if side**3 == tokens else None


def read_exported(folder: str | Path, prefix: str = "net.") -> dict[str, Any]:
    """Read an exported folder in the shape of a pretraining checkpoint.

    ``config.json``, ``model.safetensors`` and ``modality_table.safetensors`` become ``net_config``, a
    ``state_dict`` with ``prefix`` keys and ``modality_table``. A segmenter's export (its encoder config under
    ``net``, its encoder weights under ``net.``) yields its encoder.

    Raises:
        FileNotFoundError: ``config.json`` or ``model.safetensors`` is missing (named).
        ValueError: An unreadable file (named).
    """
    import json

    from safetensors.torch import load_file

    from brainfm_lightning.modalities import ModalityTable

    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for file in (config_path, weights_path):
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: model.pretrained must be a checkpoint or an export folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        weights = load_file(weights_path)
    except Exception as error:  # JSON or safetensors errors of a damaged file
        raise ValueError(f"{folder}: unreadable export ({type(error).__name__}: {error})") from error
    is_segmenter = isinstance(config.get("net"), dict)
    net_config = config["net"] if is_segmenter else config
    state = ({k.replace("net.", prefix, 1): v for k, v in weights.items() if k.startswith("net.")} if is_segmenter
             else {f"{prefix}{k}": v for k, v in weights.items()})
    table_path = folder / "modality_table.safetensors"
    table = ModalityTable.load(table_path).to_state() if table_path.is_file() else None
    return {"state_dict": state, "net_config": net_config, "modality_table": table}


def load_pretrained(
    net: nn.Module, path: str | Path, prefix: str = "net.", allow_partial: bool = False
) -> tuple[LoadReport, dict | None]:
    """Load a pretraining checkpoint's ``net.*`` weights into ``net`` and return its modality table state.

    Every encoder weight (embeddings, blocks, final norm) must be in the checkpoint with the network's shape, and
    the checkpoint may hold no encoder weight the network lacks; otherwise this raises naming each key, unless
    ``allow_partial``. Keys of the reconstruction decoder, which transfer never runs, are only reported. Prefixes
    from ``torch.compile`` (``_orig_mod.``) are ignored. A positional embedding trained on another crop (another
    patch grid) is interpolated trilinearly to the network's grid, as MAE/timm do when fine-tuning at another size.

    Args:
        net: The network to fill (a :class:`ModalityMAE`).
        path: A ``.ckpt`` written by ``brainfm fit`` (``MAEPretrainModule``), or a folder written by
            ``brainfm export`` / ``save_pretrained`` (a ``ModalityMAE``, or a ``ModalityUNETR`` whose encoder is
            taken), read without pickle.
        prefix: Prefix of the network's keys in the checkpoint's ``state_dict``.
        allow_partial: Load what matches and keep the rest at initialisation (reported) instead of raising.

    Returns:
        The :class:`LoadReport` and the checkpoint's ``modality_table`` state (``None`` if it has none).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file holds no ``state_dict`` with ``prefix`` keys, or (unless ``allow_partial``) an
            encoder weight is missing, unexpected or of another shape (each key named).
    """
    if Path(path).is_dir():
        checkpoint = read_exported(path, prefix)
    elif Path(path).is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"pretrained checkpoint not found: {path} (model.pretrained)")
    state = {}
    for key, value in checkpoint.get("state_dict", {}).items():
        key = key.replace(COMPILE_PREFIX, "")
        if key.startswith(prefix):
            state[key[len(prefix):]] = value
    if not state:
        raise ValueError(f"{path}: no '{prefix}*' weights in its state_dict; is it a pretraining checkpoint?")
    own_state = net.state_dict()
    own_keys = {k.replace(COMPILE_PREFIX, ""): k for k in own_state}  # plain name -> the net's own key
    own = {name: own_state[key] for name, key in own_keys.items()}
    interpolated = []
    for key in POS_EMBED_KEYS:
        if key in state and key in own and state[key].shape[1:] != own[key].shape[1:]:
            old_grid = checkpoint_grid(checkpoint, state[key].shape[1])
            if old_grid is not None and state[key].shape[2] == own[key].shape[2]:
                state[key] = interpolate_pos_embed(state[key], old_grid, tuple(net.grid))
                interpolated.append(key)
    mismatched = {k: f"{prefix}{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    problems = ([f"missing {prefix}{k}" for k in missing if is_encoder_key(k)]
                + [f"unexpected {prefix}{k}" for k in unexpected if is_encoder_key(k)]
                + [text for k, text in mismatched.items() if is_encoder_key(k)])
    if problems and not allow_partial:
        raise ValueError(f"{path}: the pretrained encoder does not fit the network, {len(problems)} problems: "
                         + "; ".join(problems) + ". Pretrained with another preset, patch_size, positions or text "
                         "encoder? Set model.allow_partial: true to load the rest and train these from initialisation.")
    loadable = {own_keys[k]: v for k, v in state.items() if k in own and k not in mismatched}
    net.load_state_dict(loadable, strict=False)
    table = checkpoint.get("modality_table")
    report = LoadReport(str(path), sorted(k for k in state if k in own and k not in mismatched), missing, unexpected,
                        sorted(mismatched.values()), interpolated, list(table["names"]) if table else [])
    return report, table
