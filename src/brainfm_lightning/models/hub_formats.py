"""The file formats of the two shareable networks: which config rebuilds them and which sizes their weights imply.

Kept apart from :mod:`brainfm_lightning.models.hub` (the folder and Hub mechanics), which they plug into.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from typing_extensions import override

from brainfm_lightning.models.hub import HubMixin, check_config_keys, sizes_text

T = TypeVar("T", bound=HubMixin)


class MAEHubMixin(HubMixin):
    """The file format of :class:`~brainfm_lightning.models.ModalityMAE`: its resolved size config."""

    config: dict[str, Any]
    img_size: tuple[int, int, int]
    patch_size: tuple[int, int, int]
    tokens_per_modality: int
    patch_voxels: int

    @override
    def hub_config(self) -> dict[str, Any]:
        return dict(self.config) | {"img_size": list(self.img_size), "patch_size": list(self.patch_size)}

    @override
    @classmethod
    def from_hub_config(cls: type[T], config: Mapping[str, Any]) -> T:
        check_config_keys(config, cls)
        return cls(**({"positions": "crop"} | dict(config)))  # exports before ``positions`` used the crop's grid

    def config_mismatches(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
        """Compare the sizes the weights imply (widths, block counts, tokens and voxels per patch) with the config.

        Args:
            state: The weights.
            prefix: Of this network's keys in ``state`` (and of the config keys in the messages).
        """
        def size(key: str, dim: int) -> int | None:
            tensor = state.get(prefix + key)
            return None if tensor is None or tensor.dim() <= dim else int(tensor.shape[dim])

        def blocks(stack: str) -> int:
            start = f"{prefix}{stack}.blocks."
            return len({k[len(start):].split(".", 1)[0] for k in state if k.startswith(start)})

        in_weights = {"embed_dim": size("patch_embed.proj.weight", 0), "modality_dim": size("modality_proj.weight", 1),
                      "decoder_embed_dim": size("decoder_embed.weight", 0), "depth": blocks("encoder"),
                      "decoder_depth": blocks("decoder")}
        problems = [f"{prefix}{key}: the config says {self.config[key]}, the weights hold {value}"
                    for key, value in in_weights.items() if value is not None and value != self.config[key]]
        tokens, voxels = size("pos_embed", 1), size("patch_embed.proj.weight", 1)
        if voxels is not None and voxels != self.patch_voxels:
            problems.append(f"{prefix}patch_size: the config's {sizes_text(self.patch_size)} patches hold "
                            f"{self.patch_voxels} voxels, the weights {voxels}")
        elif tokens is not None and tokens != self.tokens_per_modality:
            problems.append(f"{prefix}img_size: the config's {sizes_text(self.img_size)} crop makes "
                            f"{self.tokens_per_modality} tokens per modality, the weights hold {tokens}")
        return problems

    @override
    def card_facts(self) -> dict[str, str]:
        config = self.config
        return {"architecture": type(self).__name__, "module": "brainfm_lightning.models",
                "preset": str(config["preset"]),
                "summary": "A modality-conditioned 3D masked autoencoder for brain MRI: it encodes any set of MRI "
                           "sequences of a session, conditioned on text embeddings of their names.",
                "encoder": f"{config['embed_dim']} wide, {config['depth']} blocks, {config['num_heads']} heads, "
                           f"{config['modality_dim']}-d modality embeddings",
                "img_size": sizes_text(self.img_size), "patch_size": sizes_text(self.patch_size)}


class SegmenterHubMixin(HubMixin):
    """The file format of :class:`~brainfm_lightning.models.seg_head.ModalityUNETR`: head sizes + its MAE's config."""

    net: MAEHubMixin
    num_classes: int
    feature_size: int
    feature_layers: list[int]
    stem: str
    fusion: str

    @override
    def hub_config(self) -> dict[str, Any]:
        return {"net": self.net.hub_config(), "num_classes": self.num_classes, "feature_size": self.feature_size,
                "feature_layers": self.feature_layers[:-1],  # the last is always the encoder's depth
                "stem": self.stem, "fusion": self.fusion}

    @override
    @classmethod
    def from_hub_config(cls: type[T], config: Mapping[str, Any]) -> T:
        from brainfm_lightning.models.mae import ModalityMAE

        check_config_keys(config, cls)
        if not isinstance(config.get("net"), Mapping):
            raise ValueError(f"{cls.__name__} config: 'net' must hold the encoder's ModalityMAE config")
        head = {k: v for k, v in config.items() if k != "net"}
        return cls(ModalityMAE.from_hub_config(config["net"]), **head)

    @override
    def config_mismatches(self, state: Mapping[str, torch.Tensor]) -> list[str]:
        problems = self.net.config_mismatches(state, "net.")
        out = state.get("decoder.out.conv.conv.weight")  # [num_classes, feature_size, 1, 1, 1]
        if out is not None and out.dim() == 5:
            problems += [f"{key}: the config says {value}, the weights hold {int(out.shape[dim])}"
                         for dim, (key, value) in enumerate((("num_classes", self.num_classes),
                                                             ("feature_size", self.feature_size)))
                         if int(out.shape[dim]) != value]
        return problems

    @override
    def card_facts(self) -> dict[str, str]:
        facts = self.net.card_facts() | {"architecture": type(self).__name__, "module": type(self).__module__}
        facts["summary"] = (f"A {self.num_classes}-class segmenter for brain MRI (UNETR decoder) on a "
                            "modality-conditioned 3D masked autoencoder's encoder: it segments from any set of MRI "
                            "sequences of a session, conditioned on text embeddings of their names.")
        return facts
