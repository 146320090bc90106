"""UNETR-style segmentation on a :class:`ModalityMAE` encoder, fusing any subset of modalities (plain torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

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
    head_offset: torch.Tensor | None = None,
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
        tokens, valid = net.encode(images, modality_embeddings, present, head_offset)
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


def fuse_modalities(tokens: torch.Tensor, valid: torch.Tensor, grid: Sequence[int],
                    variance: bool = False) -> torch.Tensor:
    """Masked mean over the present modalities of tokens at the same grid position, as a feature volume.

    Args:
        tokens: ``[B, M * L, D]``; slot ``m`` holds tokens ``[m * L, (m + 1) * L)`` in row-major grid order.
        valid: bool ``[B, M * L]``, False for padded slots.
        grid: ``(gd, gh, gw)`` with ``L = gd * gh * gw``.
        variance: Also the (population) variance over the present modalities, after the mean (HeMIS's moments,
            Havaei et al. 2016); zero where one modality is present.

    Returns:
        ``[B, D, gd, gh, gw]``, or ``[B, 2 * D, gd, gh, gw]`` (mean, then variance) with ``variance``.
    """
    b, n, dim = tokens.shape
    length = grid[0] * grid[1] * grid[2]
    is_valid = valid.reshape(b, n // length, length, 1)  # [B, M, L, 1]
    per_slot = tokens.reshape(b, n // length, length, dim).masked_fill(~is_valid, 0.0)  # 0 * NaN would leak
    counts = is_valid.sum(1).clamp_min(1).to(tokens.dtype)
    fused = per_slot.sum(1) / counts
    if variance:
        deviation = (per_slot - fused[:, None]).masked_fill(~is_valid, 0.0)
        fused = torch.cat([fused, deviation.square().sum(1) / counts], -1)
    return fused.transpose(1, 2).reshape(b, fused.shape[-1], *grid)


class MomentMerge(nn.Conv3d):
    """``[B, 2C, *S]`` (mean, variance over the present sequences) -> ``[B, C, *S]`` by a learned 1x1x1 convolution.

    Initialised to pass the mean through and ignore the variance, so a segmenter with this fusion starts as the one
    with the plain mean and learns how much of the sequences' disagreement to use.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(2 * channels, channels, kernel_size=1)
        with torch.no_grad():
            self.weight.zero_()
            self.weight[:, :channels, 0, 0, 0] = torch.eye(channels)
            self.bias.zero_()


def mean_over_present(images: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, M, *S]`` -> ``[B, 1, *S]``: the mean over present slots (padded slots may hold anything, NaN too)."""
    is_present = present[:, :, None, None, None]
    summed = images.masked_fill(~is_present, 0.0).sum(1, keepdim=True)
    return summed / is_present.sum(1, keepdim=True).clamp_min(1).to(images.dtype)


Stem = Literal["mean", "per_sequence", "conditioned", "tokens"]
STEMS: tuple[str, ...] = ("mean", "per_sequence", "conditioned", "tokens")
Fusion = Literal["mean", "mean_var"]
FUSIONS: tuple[str, ...] = ("mean", "mean_var")


class UNETRDecoder(nn.Module):
    """UNETR's convolutional decoder (Hatamizadeh et al. 2022) from MONAI blocks, for any power-of-two patch size.

    With ``k = log2(patch)`` levels: a conv stem on the image at full resolution, ``k - 1`` token skips brought to
    ``1/2 .. 1/2^(k-1)`` resolution by transposed convolutions, and the deepest tokens at the patch grid, merged
    back up by ``k`` up-blocks. ``patch = 16`` gives MONAI's ``UNETR`` decoder exactly.

    ``in_channels=0`` drops the image stem: the full-resolution features are then a further token skip brought up
    by ``k`` transposed convolutions (``forward`` takes ``k`` skips), so everything the decoder sees went through the
    encoder.

    Args:
        embed_dim: Token width.
        patch_size: Patch edges; all equal, a power of two >= 4.
        num_classes: Output channels (classes including background).
        in_channels: Channels of the image the stem sees; 0 for no image path.
        feature_size: Channels at full resolution; doubled at every level.
        norm_name: MONAI norm of the conv blocks.
        stem_variance: With ``present`` (a stem on each sequence), fuse the stem features by their mean and variance
            over the present sequences (:class:`MomentMerge`) rather than by their mean alone.
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: Sequence[int],
        num_classes: int,
        in_channels: int = 1,
        feature_size: int = 16,
        norm_name: str = "instance",
        stem_variance: bool = False,
    ) -> None:
        super().__init__()
        edge = patch_size[0]
        if len(set(patch_size)) != 1 or edge < 4 or edge & (edge - 1):
            raise ValueError(f"UNETRDecoder needs equal power-of-two patch edges >= 4, got {tuple(patch_size)}")
        if num_classes < 1 or feature_size < 1 or in_channels < 0:
            raise ValueError(f"num_classes and feature_size must be >= 1 and in_channels >= 0, got {num_classes}, "
                             f"{feature_size}, {in_channels}")
        self.levels = edge.bit_length() - 1
        blocks = dict(spatial_dims=3, kernel_size=3, norm_name=norm_name, res_block=True)
        self.stem = (UnetrBasicBlock(in_channels=in_channels, out_channels=feature_size, stride=1, **blocks)
                     if in_channels else None)
        self.stem_merge = MomentMerge(feature_size) if stem_variance and in_channels else None
        # skips[s - 1] serves resolution 1/2^s with feature_size * 2^s channels (s = 0 too, without a stem)
        first_skip = 1 if self.stem is not None else 0
        self.skips = nn.ModuleList(
            UnetrPrUpBlock(in_channels=embed_dim, out_channels=feature_size * 2**s, num_layer=self.levels - s - 1,
                           stride=1, upsample_kernel_size=2, conv_block=True, **blocks)
            for s in range(first_skip, self.levels)
        )
        # ups[s] goes from resolution 1/2^(s+1) to 1/2^s
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=embed_dim if s == self.levels - 1 else feature_size * 2 ** (s + 1),
                         out_channels=feature_size * 2**s, upsample_kernel_size=2, **blocks)
            for s in range(self.levels)
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=feature_size, out_channels=num_classes)

    def forward(self, image: torch.Tensor | None, skips: Sequence[torch.Tensor], deepest: torch.Tensor,
                present: torch.Tensor | None = None, film: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at full resolution.

        Args:
            image: ``[B, in_channels, *S]`` for the stem (``None`` without one); with ``present``, ``[B, M, *S]``:
                the stem (``in_channels=1``) runs on each present slot and its features are averaged over them.
            skips: Token volumes ``[B, D, *grid]``, shallow to deep: ``k - 1`` with a stem, ``k`` without.
            deepest: ``[B, D, *grid]``.
            present: Optional bool ``[B, M]``: the slots of ``image`` that hold a sequence.
            film: Optional ``[B, M, 2 * feature_size]`` (with ``present``): each slot's stem features ``f`` become
                ``f * (1 + scale) + shift`` before the mean, ``scale`` and ``shift`` being the two halves.
        """
        if len(skips) != len(self.skips):
            raise ValueError(f"expected {len(self.skips)} skip feature volumes, got {len(skips)}")
        if (image is None) != (self.stem is None):
            raise ValueError("the decoder " + ("has an image stem: pass the image" if self.stem is not None
                                               else "has no image stem: pass image=None"))
        features = [block(x) for block, x in zip(self.skips, skips, strict=True)]
        if self.stem is not None:
            features.insert(0, self.stem(image) if present is None else self._per_slot_stem(image, present, film))
        x = deepest
        for s in reversed(range(self.levels)):
            x = self.ups[s](x, features[s])
        return self.out(x)

    def _per_slot_stem(self, images: torch.Tensor, present: torch.Tensor,
                       film: torch.Tensor | None = None) -> torch.Tensor:
        """The stem on each present slot of ``images`` ``[B, M, *S]`` (padded slots are never computed), averaged.

        With ``film`` ``[B, M, 2F]``, each slot's features are scaled and shifted by its row first. With
        ``stem_merge``, their variance over the slots joins the mean through it.
        """
        b = images.shape[0]
        features = self.stem(images[present].unsqueeze(1))  # [S, F, *S]
        if film is not None:
            rows = film[present]  # [S, 2F]
            scale, shift = rows.reshape(*rows.shape, *([1] * (features.dim() - 2))).chunk(2, 1)
            features = features * (1.0 + scale) + shift
        session = torch.nonzero(present)[:, 0]
        counts = present.sum(1).clamp_min(1).to(features.dtype).reshape(b, *([1] * (features.dim() - 1)))
        mean = features.new_zeros(b, *features.shape[1:]).index_add_(0, session, features) / counts
        if self.stem_merge is None:
            return mean
        squares = (features - mean[session]).square()
        variance = squares.new_zeros(mean.shape).index_add_(0, session, squares) / counts
        return self.stem_merge(torch.cat([mean, variance], 1))


class ModalityUNETR(nn.Module, SegmenterHubMixin):
    """Segmentation network: the MAE's encoder on every present modality, fused per position, and a UNETR decoder.

    ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` work as for :class:`ModalityMAE`; ``config.json``
    holds the head's arguments and the encoder's config under ``net``.

    The full-resolution path (``stem``) decides how much the encoder carries:

    - ``mean``: UNETR's conv stem on the mean of the present z-scored sequences. Cheap, but the decoder can segment
      a lesion from this mean alone, past the encoder.
    - ``per_sequence``: one shared conv stem on each present sequence, then the mean of their features: the same
      image path, fused after a non-linearity rather than before it. The stem does not know which sequence it
      reads, so a lesion dark on T1 and bright on FLAIR partly cancels in the mean.
    - ``conditioned``: ``per_sequence`` with each sequence's stem features scaled and shifted (FiLM) by a linear
      map of its modality embedding, zero at initialisation (so it starts as ``per_sequence``): the image path
      knows each sequence's contrast by its name, as the encoder does through Conditional LayerNorm.
    - ``tokens``: no image path; the full-resolution features are encoder tokens (of the shallowest skip depth)
      brought up by transposed convolutions, so every feature went through the encoder.

    ``fusion`` decides how the sequences of one position meet: ``mean`` averages their tokens (and, with a stem per
    sequence, their stem features); ``mean_var`` also takes their variance over the present sequences and merges
    the two by a learned 1x1x1 convolution (:class:`MomentMerge`, HeMIS's mean and variance), which starts as the
    mean. The mean alone lets a lesion dark on one sequence and bright on the others partly cancel; the variance
    keeps that disagreement. The ``mean`` stem averages the images themselves, so there only the tokens change.

    Args:
        net: The (pretrained) :class:`ModalityMAE`; its reconstruction decoder is not used.
        num_classes: Classes including background.
        feature_size: Decoder channels at full resolution.
        feature_layers: Encoder depths of the token skips, shallow to deep (default: evenly spaced, as UNETR's
            3, 6, 9 of 12): ``k - 1`` of them for ``k = log2(patch)`` levels, ``k`` with ``stem="tokens"``; the
            deepest features are always the encoder's normed output.
        stem: ``mean``, ``per_sequence``, ``conditioned`` or ``tokens`` (above).
        fusion: ``mean`` or ``mean_var`` (above).
    """

    def __init__(
        self,
        net: ModalityMAE,
        num_classes: int = 2,
        feature_size: int = 16,
        feature_layers: Sequence[int] | None = None,
        stem: Stem = "mean",
        fusion: Fusion = "mean",
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.net = net
        self.num_classes, self.feature_size, self.stem, self.fusion = num_classes, feature_size, stem, fusion
        with_variance = fusion == "mean_var"
        self.decoder = UNETRDecoder(net.config["embed_dim"], net.patch_size, num_classes,
                                    0 if stem == "tokens" else 1, feature_size,
                                    stem_variance=with_variance and stem in ("per_sequence", "conditioned"))
        self.stem_film = None
        if stem == "conditioned":  # FiLM of the stem features by the modality embedding; identity at init
            self.stem_film = nn.Linear(net.modality_dim, 2 * feature_size)
            nn.init.zeros_(self.stem_film.weight)
            nn.init.zeros_(self.stem_film.bias)
        depth, skips = net.config["depth"], len(self.decoder.skips)
        layers = (list(feature_layers) if feature_layers is not None
                  else [depth * s // (skips + 1) for s in range(1, skips + 1)])
        if len(layers) != skips:
            raise ValueError(f"feature_layers needs {skips} encoder depths for patch {net.patch_size} and "
                             f"stem={stem!r}, got {layers}")
        self.feature_layers = layers + [depth]
        self.token_merges = (nn.ModuleList(MomentMerge(net.config["embed_dim"]) for _ in self.feature_layers)
                             if with_variance else None)

    def forward(self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
                head_offset: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, C, *img_size] of images [B, M, *img_size], modality_embeddings [B, M, Cm], present bool [B, M].

        ``head_offset`` [B, 3]: each crop's centre minus its head's centre in voxels (:meth:`ModalityMAE.forward`).
        """
        states, valid = encoder_hidden_states(self.net, images, modality_embeddings, present, self.feature_layers,
                                              head_offset)
        if self.token_merges is None:
            volumes = [fuse_modalities(x, valid, self.net.grid) for x in states]
        else:
            volumes = [merge(fuse_modalities(x, valid, self.net.grid, variance=True))
                       for merge, x in zip(self.token_merges, states, strict=True)]
        if self.stem == "tokens":
            return self.decoder(None, volumes[:-1], volumes[-1])
        if self.stem == "per_sequence":
            return self.decoder(images, volumes[:-1], volumes[-1], present=present)
        if self.stem_film is not None:
            film = self.stem_film(modality_embeddings.masked_fill(~present[..., None], 0.0))
            return self.decoder(images, volumes[:-1], volumes[-1], present=present, film=film)
        return self.decoder(mean_over_present(images, present), volumes[:-1], volumes[-1])
