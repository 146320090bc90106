"""What fine-tuning modules share: loading a pretraining checkpoint, freezing, layer-wise lr decay, the optimizer."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from brainfm_lightning.models import ModalityMAE
from brainfm_lightning.modules.modality_embedding import ModalityEmbeddingMixin
from brainfm_lightning.modules.pretrained import EMBEDDING_PREFIXES, LoadReport, load_pretrained
from brainfm_lightning.modules.schedule import cosine_with_warmup, no_decay, stepping_batches, warmup_steps
from brainfm_lightning.modules.skipping import SkippedBatchMixin

FreezeMode = Literal["none", "partial", "full"]
_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")


def encoder_layer(name: str, depth: int) -> int | None:
    """Layer id of a :class:`ModalityMAE` parameter, for lr decay and freezing.

    Returns:
        0 for the embeddings, ``i + 1`` for block ``i``, ``depth + 1`` for the final norm, ``None`` for the
        reconstruction decoder (unused by transfer).
    """
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    block = _BLOCK.match(name)
    if block:
        return int(block.group(1)) + 1
    return depth + 1 if name.startswith("encoder.") else None


def is_frozen(name: str, depth: int, freeze: FreezeMode) -> bool:
    """Whether a :class:`ModalityMAE` parameter is frozen under ``freeze``.

    ``full`` freezes the whole encoder, ``partial`` the embeddings and the first ``depth // 2`` blocks, ``none``
    nothing; the reconstruction decoder is always frozen (transfer never runs it).
    """
    layer = encoder_layer(name, depth)
    if layer is None or freeze == "full":
        return True
    return freeze == "partial" and layer <= depth // 2


class TransferModule(SkippedBatchMixin, ModalityEmbeddingMixin):
    """Base of the fine-tuning modules: ``self.net`` is a :class:`ModalityMAE`, every other parameter is the head."""

    net: ModalityMAE
    optimizer_factory: Callable

    def _init_transfer(self, pretrained: str | None, freeze: FreezeMode, text_encoder: str,
                       modality_table: str | None, descriptions: Mapping[str, str] | None,
                       aliases: Mapping[str, str] | None, allow_partial: bool = False) -> None:
        """Modality table, pretrained weights (their table, plus names only the given table has), freezing.

        The encoder loads strictly (:func:`load_pretrained`); ``allow_partial`` keeps what does not fit at
        initialisation instead of raising.
        """
        if freeze not in ("none", "partial", "full"):
            raise ValueError(f"freeze_encoder must be 'none', 'partial' or 'full', got {freeze!r}")
        self.modality_dim = self.net.modality_dim
        self.text_encoder, self.modality_table_path = text_encoder, modality_table
        self.descriptions, self.aliases = descriptions, aliases
        self._init_modality_table()
        self.pretrained_report: LoadReport | None = None
        if pretrained:
            self.pretrained_report, table = load_pretrained(self.net, pretrained, allow_partial=allow_partial)
            if table is not None:
                ModalityEmbeddingMixin.on_load_checkpoint(self, {"modality_table": table})
                if self.modality_table.dim != self.modality_dim:
                    raise ValueError(f"{pretrained}: modality table has {self.modality_table.dim}-d vectors but "
                                     f"the network expects modality_dim={self.modality_dim}")
            rank_zero_info(str(self.pretrained_report))
        depth = len(self.net.encoder.blocks)
        for name, param in self.net.named_parameters():
            param.requires_grad_(not is_frozen(name, depth, freeze))

    def embed_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Modality embeddings ``[B, M, modality_dim]`` of a batch's names."""
        return self.modality_embeddings(batch["modalities"], like=batch["images"])

    def _named_trainable(self) -> Iterator[tuple[str, nn.Parameter, int]]:
        """``(name, parameter, layer id)`` of trainable parameters; the head's layer is ``depth + 1`` (no decay)."""
        depth = len(self.net.encoder.blocks)
        net_layers = {id(p): encoder_layer(n, depth) for n, p in self.net.named_parameters()}
        for name, param in self.named_parameters():
            if param.requires_grad:
                layer = net_layers.get(id(param))
                yield name, param, depth + 1 if layer is None else layer

    def parameter_groups(self, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
        """Groups with ``lr_scale = layer_decay ** (depth + 1 - layer)`` (BEiT/MAE fine-tuning).

        ``encoder`` marks the groups of ``self.net``'s parameters (which ``head_only_steps`` holds back).

        No weight decay on biases, norms, positional embeddings and the CLN scale/shift maps, as in pretraining.
        """
        depth = len(self.net.encoder.blocks)
        encoder = {id(p) for p in self.net.parameters()}
        groups: dict[tuple[int, bool, bool], dict[str, Any]] = {}
        for name, param, layer in self._named_trainable():
            is_exempt, in_encoder = no_decay(name, param), id(param) in encoder
            key = (layer, is_exempt, in_encoder)
            if key not in groups:
                groups[key] = {"params": [], "weight_decay": 0.0 if is_exempt else weight_decay,
                               "lr_scale": layer_decay ** (depth + 1 - layer), "encoder": in_encoder}
            groups[key]["params"].append(param)
        return list(groups.values())

    @override
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = self.optimizer_factory(self.parameter_groups(hp.weight_decay, hp.layer_decay))
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        total = stepping_batches(self.trainer)
        head_only = warmup_steps(hp.get("head_only_steps", 0), total)
        scheduler = cosine_with_warmup(optimizer, total, warmup_steps(hp.warmup_steps, total), hp.min_lr_ratio,
                                       [head_only if group["encoder"] else 0 for group in optimizer.param_groups])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_optimization(weight_decay: float, layer_decay: float, warmup_steps: float,
                       head_only_steps: float = 0.0) -> None:
    """Raise ``ValueError`` naming a bad optimisation argument."""
    if weight_decay < 0 or warmup_steps < 0:
        raise ValueError(f"weight_decay and warmup_steps must be >= 0, got {weight_decay}, {warmup_steps}")
    if head_only_steps < 0:
        raise ValueError(f"head_only_steps must be >= 0, got {head_only_steps}")
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
