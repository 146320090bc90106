"""UNETR-style segmentation on a :class:`ModalityMAE` encoder, fusing any subset of modalities (plain torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from brainfm_lightning.models.hub_formats import SegmenterHubMixin
from brainfm_lightning.models.mae import ModalityMAE


def encoder_hidden_states(
    net: ModalityMAE,
    images: torch.Tensor,
    modality_embeddings: torch.Tensor,
    present: torch.Tensor,
    layers: Sequence[int],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Unmasked encoder tokens after ``layers[i]`` blocks (0: the embedded tokens; ``depth``: the normed output).

    Runs :meth:`ModalityMAE.encode` and reads the intermediate blocks through forward hooks, so it follows whatever
    the encoder does inside (padded or pad-free compute, gradient checkpointing).

    Returns:
        One ``[B, M * L, D]`` tensor per entry of ``layers`` (zeros or junk at padded positions) and ``valid``
        bool ``[B, M * L]``.
    """
    blocks = net.encoder.blocks
    if any(not 0 <= k <= len(blocks) for k in layers):
        raise ValueError(f"encoder layers must lie in [0, {len(blocks)}], got {list(layers)}")
    captured: dict[int, torch.Tensor] = {}

    def keep(k: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor | None = None) -> None:
            captured[k] = args[0] if output is None else output

        return hook

    handles = [blocks[k - 1].register_forward_hook(keep(k)) for k in set(layers) if 0 < k < len(blocks)]
    if 0 in layers:
        handles.append(blocks[0].register_forward_pre_hook(keep(0)))
    try:
        tokens, valid = net.encode(images, modality_embeddings, present)
    finally:
        for handle in handles:
            handle.remove()
    captured[len(blocks)] = tokens
    return [_unpacked(captured[k], valid) for k in layers], valid


def _unpacked(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Pad-free encoders run blocks on packed valid tokens ``[T, D]``: scatter them back to ``[B, N, D]``."""
    if tokens.dim() == 3:
        return tokens
    from brainfm_lightning.models.packing import Packing  # only pad-free encoders pack

    return Packing.from_valid(valid).unpack(tokens)


def fuse_modalities(tokens: torch.Tensor, valid: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Masked mean over the present modalities of tokens at the same grid position, as a feature volume.

    Args:
        tokens: ``[B, M * L, D]``; slot ``m`` holds tokens ``[m * L, (m + 1) * L)`` in row-major grid order.
        valid: bool ``[B, M * L]``, False for padded slots.
        grid: ``(gd, gh, gw)`` with ``L = gd * gh * gw``.

    Returns:
        ``[B, D, gd, gh, gw]``.
    """
    b, n, dim = tokens.shape
    length = grid[0] * grid[1] * grid[2]
    is_valid = valid.reshape(b, n // length, length, 1)  # [B, M, L, 1]
    summed = tokens.reshape(b, n // length, length, dim).masked_fill(~is_valid, 0.0).sum(1)  # 0 * NaN would leak
    fused = summed / is_valid.sum(1).clamp_min(1).to(tokens.dtype)
    return fused.transpose(1, 2).reshape(b, dim, *grid)


def mean_over_present(images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, M, *S]`` -> ``[B, 1, *S]``: the mean over present slots (padded slots may hold anything, NaN too)."""
    is_present = present[:, :, None, None, None]
    summed = images.masked_fill(~is_present, 0.0).sum(1, keepdim=True)
    return summed / is_present.sum(1, keepdim=True).clamp_min(1).to(images.dtype)


class UNETRDecoder(nn.Module):
    """UNETR's convolutional decoder (Hatamizadeh et al. 2022) from MONAI blocks, for any power-of-two patch size.

    With ``k = log2(patch)`` levels: a conv stem on the image at full resolution, ``k - 1`` token skips brought to
    ``1/2 .. 1/2^(k-1)`` resolution by transposed convolutions, and the deepest tokens at the patch grid, merged
    back up by ``k`` up-blocks. ``patch = 16`` gives MONAI's ``UNETR`` decoder exactly.

    Args:
        embed_dim: Token width.
        patch_size: Patch edges; all equal, a power of two >= 4.
        num_classes: Output channels (classes including background).
        in_channels: Channels of the image the stem sees.
        feature_size: Channels at full resolution; doubled at every level.
        norm_name: MONAI norm of the conv blocks.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: Sequence[int],
        num_classes: int,
        in_channels: int = 1,
        feature_size: int = 16,
        norm_name: str = "instance",
    ) -> None:
        super().__init__()
        edge = patch_size[0]
        if len(set(patch_size)) != 1 or edge < 4 or edge & (edge - 1):
            raise ValueError(f"UNETRDecoder needs equal power-of-two patch edges >= 4, got {tuple(patch_size)}")
        if num_classes < 1 or feature_size < 1:
            raise ValueError(f"num_classes and feature_size must be >= 1, got {num_classes}, {feature_size}")
        self.levels = edge.bit_length() - 1
        blocks = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=True)
        self.stem = UnetrBasicBlock(in_channels=in_channels, out_channels=feature_size, stride=1, **blocks)
        # skips[s - 1] serves resolution 1/2^s with feature_size * 2^s channels
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(in_channels=embed_dim, out_channels=feature_size * 2**s, num_layer=self.levels - s - 1,
                           stride=1, upsample_kernel_size=2, conv_block=True, **blocks)
            for s in range(1, self.levels)
        )
        # ups[s] goes from resolution 1/2^(s+1) to 1/2^s
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=embed_dim if s == self.levels - 1 else feature_size * 2 ** (s + 1),
                         out_channels=feature_size * 2**s, upsample_kernel_size=2, **blocks)
            for s in range(self.levels)
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=feature_size, out_channels=num_classes)

    def forward(self, image: torch.Tensor, skips: Sequence[torch.Tensor], deepest: torch.Tensor) -> torch.Tensor:
        """image: [B, in_channels, *S]; skips: k - 1 volumes [B, D, *grid], shallow to deep; deepest: [B, D, *grid]."""
        if len(skips) != self.levels - 1:
            raise ValueError(f"expected {self.levels - 1} skip feature volumes, got {len(skips)}")
        features = [self.stem(image)] + [block(x) for block, x in zip(self.skips, skips, strict=True)]
        x = deepest
        for s in reversed(range(self.levels)):
            x = self.ups[s](x, features[s])
        return self.out(x)


class ModalityUNETR(nn.Module, SegmenterHubMixin):
    """Segmentation network: the MAE's encoder on every present modality, fused per position, and a UNETR decoder.

    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` work as for :class:`ModalityMAE`; ``config.json``
    holds the head's arguments and the encoder's config under ``net``.

    Args:
        net: The (pretrained) :class:`ModalityMAE`; its reconstruction decoder is not used.
        num_classes: Classes including background.
        feature_size: Decoder channels at full resolution.
        feature_layers: Encoder depths of the ``k - 1`` skips, shallow to deep (default: evenly spaced, as UNETR's
            3, 6, 9 of 12); the deepest features are always the encoder's normed output.
    """

    def __init__(
        self,
        net: ModalityMAE,
        num_classes: int = 2,
        feature_size: int = 16,
        feature_layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes, self.feature_size = num_classes, feature_size
        self.decoder = UNETRDecoder(net.config["embed_dim"], net.patch_size, num_classes, 1, feature_size)
        depth, levels = net.config["depth"], self.decoder.levels
        layers = list(feature_layers) if feature_layers is not None else [depth * s // levels for s in range(1, levels)]
        if len(layers) != levels - 1:
            raise ValueError(f"feature_layers needs {levels - 1} encoder depths for patch {net.patch_size}, "
                             f"got {layers}")
        self.feature_layers = layers + [depth]

    def forward(self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, *img_size] of images [B, M, *img_size], modality_embeddings [B, M, Cm], present bool [B, M]."""
        states, valid = encoder_hidden_states(self.net, images, modality_embeddings, present, self.feature_layers)
        volumes = [fuse_modalities(x, valid, self.net.grid) for x in states]
        return self.decoder(mean_over_present(images, present), volumes[:-1], volumes[-1])
