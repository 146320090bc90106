"""Modality-conditioned 3D masked autoencoder (plain torch, no Lightning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from brainfm_lightning.masking import padding_aware_mask, visible_index
from brainfm_lightning.models.hub_formats import MAEHubMixin
from brainfm_lightning.models.patch_embed import PatchEmbed3d, patch_view, patchify
from brainfm_lightning.models.pos_embed import sincos_3d, sincos_positions
from brainfm_lightning.models.presets import preset_config
from brainfm_lightning.models.transformer import ConditionedTransformer
from brainfm_lightning.sizes import to_3tuple


@dataclass
class MAEOutput:
    """What the losses need from one forward pass (``N = M * L`` tokens, ``K`` = most visible tokens).

    Only the masked patches are reconstructed in the forward pass (the loss needs no others); :attr:`pred` and
    :attr:`target` rebuild the full ``[B, N, P]`` tensors on demand, for pictures and tests.
    """

    pred_masked: torch.Tensor  # [Q, P] reconstruction of the masked valid patches, in ``is_masked`` order
    target_masked: torch.Tensor  # [Q, P] their input patches
    keep: torch.Tensor  # bool [B, N] visible to the encoder
    valid: torch.Tensor  # bool [B, N] not padding
    features: torch.Tensor  # [B, K, D] encoder output for the visible tokens
    features_valid: torch.Tensor  # bool [B, K] False for the filler slots of rows with fewer visible tokens
    decoded: torch.Tensor  # [B, N, Dd] decoder output of every token (padded positions: nothing depends on them)
    patches: torch.Tensor  # [R, P] the input's patches of the computed modality slots
    patch_row: torch.Tensor  # long [B, N] row of ``patches`` of each token, -1 at padded positions
    head: nn.Module  # decoder features -> patch voxels

    @property
    def is_masked(self) -> torch.Tensor:
        """Positions hidden from the encoder and not padding, bool [B, N]; the reconstruction loss covers these."""
        return self.valid & ~self.keep

    @property
    def pred(self) -> torch.Tensor:
        """``[B, N, P]`` reconstruction of every patch, zero at padded positions."""
        return self.head(self.decoded).masked_fill(~self.valid[..., None], 0.0)

    @property
    def target(self) -> torch.Tensor:
        """``[B, N, P]`` the input's patches, zero at padded positions."""
        rows = self.patches[self.patch_row.clamp_min(0)]
        return rows.masked_fill(~self.valid[..., None], 0.0)

    def visible_features(self) -> torch.Tensor:
        """``[N_visible, D]``: encoder features of all valid visible tokens of the batch (VICReg's ``z``)."""
        return self.features[self.features_valid]


class ModalityMAE(nn.Module, MAEHubMixin):
    """Masked autoencoder over all sequences of an MRI session, conditioned on text-derived modality embeddings.

    Every size argument left as ``None`` takes the value of ``preset``; keyword names follow fb/mae's
    ``MaskedAutoencoderViT``. The default preset is ``base``, so ``ModalityMAE()`` builds the paper's full-size
    network: ViT-B (768 wide, 12 blocks, 12 heads) on 128^3 crops of 16^3 patches, 768-d (BioBERT) modality
    embeddings and a 512-wide, 8-block decoder (160M parameters). Pass ``preset="small"`` or ``"test"`` (or
    every size) for smaller networks; configs set ``preset`` explicitly.

    ``save_pretrained(DIR)`` writes ``config.json`` + ``model.safetensors`` (and the ``modality_table``, if set);
    ``ModalityMAE.from_pretrained(DIR_OR_HUB_ID)`` reads them back strictly, without Lightning or pickle;
    ``push_to_hub`` shares them (:mod:`brainfm_lightning.models.hub`).

    Args:
        img_size: Crop size, an int or a 3-tuple; each divisible by ``patch_size``.
        patch_size: Patch edge, an int or a 3-tuple.
        modality_dim: Width of the modality text embeddings (384 for MiniLM, 768 for BioBERT).
        embed_dim: Encoder width.
        depth: Encoder blocks.
        num_heads: Encoder attention heads.
        decoder_embed_dim: Decoder width.
        decoder_depth: Decoder blocks.
        decoder_num_heads: Decoder attention heads.
        mlp_ratio: MLP hidden width over the token width.
        mask_ratio: Fraction of each session's valid tokens hidden from the encoder, in (0, 1).
        conditioning: ``cln`` (the method): every norm of encoder and decoder is a Conditional LayerNorm of the
            modality embedding; ``none``: plain LayerNorms (the ablation), the embedding then enters the tokens only.
        modality_norm: Standardise each modality embedding over its features (a LayerNorm without parameters)
            before it enters the tokens and the Conditional LayerNorms, which makes the network blind to the text
            encoder's scale (MiniLM gives unit vectors, BioBERT's CLS vectors are ~10x longer). Off by default: on
            the demo the standardised (~20x larger) condition made the CLN maps' Adam steps ~20x larger and
            pretraining worse (masked-patch error 0.87 against 0.73 after 600 steps, docs/label_efficiency.md).
        positions: Where a token's position is measured. ``head`` (the default): in voxels from the centre of the
            head, so one place in the head has one position whichever crop shows it; the embedding is the fixed
            sin-cos of that continuous coordinate (fb/mae's fixed embedding; periods from 6 voxels up), and each
            batch says where its crops lie (``head_offset``, :meth:`forward`). ``crop``: the token's cell in the
            crop, a learnable table initialised with sin-cos (the layout before ``positions`` existed). With
            random crops a crop's cells do not say where in the head a token lies: on the 4 mm demo pool (1000
            steps) a ``crop`` network's masked-patch error was 0.49, a ``head`` network's 0.19 with its crops on
            the patch lattice (``crop_step``), against 0.20 for the average-brain template
            (docs/label_efficiency.md).
        modality_init_gain: Gain of the Xavier initialisation of the two projections that add the modality
            embedding to the tokens (encoder and decoder). With unit-norm MiniLM vectors a gain of 1 adds about
            0.06 per channel to tokens of scale 1 (positional embedding about 0.7), so the network starts nearly
            blind to the sequence; a gain of ~10 starts the modality term at the positional embedding's scale.
        pad_free: Compute on packed valid tokens only (attention per group of equal length); ``False`` runs the
            padded batch with a key-padding mask. Both give the same numbers.
        gradient_checkpointing: Recompute block activations in the backward pass to save memory.
        preset: Named size that fills the arguments left as ``None`` (``test``, ``small``, ``base``); ``base`` by
            default.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = None,
        modality_dim: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        decoder_embed_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        conditioning: Literal["cln", "none"] = "cln",
        modality_norm: bool = False,
        modality_init_gain: float = 1.0,
        positions: Literal["head", "crop"] = "head",
        pad_free: bool = True,
        gradient_checkpointing: bool = False,
        preset: str = "base",
    ) -> None:
        super().__init__()
        given = dict(img_size=img_size, patch_size=patch_size, modality_dim=modality_dim, embed_dim=embed_dim,
                     depth=depth, num_heads=num_heads, decoder_embed_dim=decoder_embed_dim,
                     decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads)
        cfg = preset_config(preset) | {k: v for k, v in given.items() if v is not None}
        self.img_size = to_3tuple(cfg["img_size"], "img_size")
        self.patch_size = to_3tuple(cfg["patch_size"], "patch_size")
        if any(i % p for i, p in zip(self.img_size, self.patch_size, strict=True)):
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        if modality_init_gain <= 0:
            raise ValueError(f"modality_init_gain must be > 0, got {modality_init_gain}")
        if conditioning not in ("cln", "none"):
            raise ValueError(f"conditioning must be 'cln' or 'none', got {conditioning!r}")
        if positions not in ("head", "crop"):
            raise ValueError(f"positions must be 'head' or 'crop', got {positions!r}")
        self.mask_ratio = mask_ratio
        self.config = cfg | dict(mlp_ratio=mlp_ratio, mask_ratio=mask_ratio, conditioning=conditioning,
                                 modality_norm=modality_norm, modality_init_gain=modality_init_gain,
                                 positions=positions, pad_free=pad_free,
                                 gradient_checkpointing=gradient_checkpointing, preset=preset)
        self.grid = tuple(i // p for i, p in zip(self.img_size, self.patch_size, strict=True))
        self.tokens_per_modality = self.grid[0] * self.grid[1] * self.grid[2]
        self.modality_dim = cfg["modality_dim"]
        dim, dec_dim = cfg["embed_dim"], cfg["decoder_embed_dim"]
        self.patch_voxels = patch_voxels = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

        self.patch_embed = PatchEmbed3d(self.patch_size, dim)
        self.modality_proj = nn.Linear(self.modality_dim, dim)
        # the centre of every grid cell, in voxels from the crop's centre: [L, 3], row-major (d, h, w)
        cells = torch.meshgrid(*((torch.arange(g, dtype=torch.float32) - (g - 1) / 2) * p
                                 for g, p in zip(self.grid, self.patch_size, strict=True)), indexing="ij")
        self.register_buffer("cell_centres", torch.stack([c.reshape(-1) for c in cells], dim=-1), persistent=False)
        if positions == "crop":  # learnable [1, L, D] tables, shared by all modalities
            self.pos_embed = nn.Parameter(sincos_3d(self.grid, dim)[None])
            self.decoder_pos_embed = nn.Parameter(sincos_3d(self.grid, dec_dim)[None])
        conditioned = conditioning == "cln"
        self.encoder = ConditionedTransformer(dim, cfg["depth"], cfg["num_heads"], self.modality_dim, mlp_ratio,
                                              pad_free, conditioned)

        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_modality_proj = nn.Linear(self.modality_dim, dec_dim)
        self.decoder = ConditionedTransformer(dec_dim, cfg["decoder_depth"], cfg["decoder_num_heads"],
                                              self.modality_dim, mlp_ratio, pad_free, conditioned)
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = gradient_checkpointing
        self.decoder_pred = nn.Linear(dec_dim, patch_voxels)
        self._init_weights()

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> ModalityMAE:
        """Build a named preset (``test``, ``small``, ``base``) with optional overrides."""
        return cls(preset=name, **overrides)  # type: ignore[arg-type]

    @classmethod
    def from_checkpoint(cls, path: str | Path, map_location: str | torch.device = "cpu") -> ModalityMAE:
        """Rebuild the network of a pretraining checkpoint (``brainfm fit``) and load its weights, without Lightning.

        Args:
            path: A ``.ckpt`` file written by ``MAEPretrainModule``.
            map_location: Where to load the tensors.

        Raises:
            ValueError: The checkpoint holds no network config, or its weights do not match the network exactly.
        """
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
        if "net_config" not in checkpoint:
            raise ValueError(f"{path}: not a BrainFM pretraining checkpoint (no 'net_config' entry)")
        # checkpoints written before ``positions`` existed used the crop's grid
        config = {"positions": "crop"} | {k: v for k, v in checkpoint["net_config"].items() if k != "preset"}
        net = cls(preset=checkpoint["net_config"]["preset"], **config)
        prefix = "net."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the network: missing {missing}, unexpected {unexpected}")
        return net

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for projection in (self.modality_proj, self.decoder_modality_proj):
            nn.init.xavier_uniform_(projection.weight, gain=self.config["modality_init_gain"])
        for module in self.modules():  # CLN keeps its identity initialisation
            if hasattr(module, "to_scale_shift"):
                module.reset_parameters()

    def _prepare(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check shapes and cut patches.

        Returns:
            ``patches`` ``[R, P]``, ``patch_row`` long ``[B, N]`` (row of ``patches`` per token, -1 at padding),
            ``valid`` bool ``[B, N]``, ``slot`` long ``[B, N]``, and the embeddings with padded slots zeroed.
            Pad-free, ``patches`` holds the present slots only; padded, every slot (padded ones zeroed).
        """
        b, m = present.shape
        if images.shape[:2] != (b, m) or tuple(images.shape[2:]) != self.img_size:
            raise ValueError(f"images must be [B, M, *{self.img_size}] with [B, M] = {(b, m)}, "
                             f"got {tuple(images.shape)}")
        if modality_embeddings.shape != (b, m, self.modality_dim):
            raise ValueError(f"modality_embeddings must be {(b, m, self.modality_dim)}, "
                             f"got {tuple(modality_embeddings.shape)}")
        # padded slots may hold anything, NaN included: zero them so nothing leaks through 0 * NaN
        modality_embeddings = modality_embeddings.masked_fill(~present[..., None], 0.0)
        if self.config["modality_norm"]:  # a zero (padded) row stays zero
            modality_embeddings = F.layer_norm(modality_embeddings, (self.modality_dim,), eps=1e-8)
        length = self.tokens_per_modality
        if self.config["pad_free"]:  # patchify the present slots only: no copy of padded volumes
            patches = patch_view(images, self.patch_size)[present].reshape(-1, self.patch_voxels)  # [S * L, P]
            # indexing by present keeps row-major (session, slot) order: a present slot's row is its rank among them
            slot_row = (present.flatten().long().cumsum(0) - 1).reshape(b, m).masked_fill(~present, -1)
        else:
            images = images.masked_fill(~present[:, :, None, None, None], 0.0)
            patches = patchify(images, self.patch_size).reshape(b * m * length, self.patch_voxels)
            slot_row = torch.arange(b * m, device=images.device).reshape(b, m)
        slot = torch.arange(m, device=images.device).repeat_interleave(length)[None].expand(b, -1)  # [B, N]
        position = torch.arange(length, device=images.device).repeat(m)[None]  # [1, N]
        row_of_slot = slot_row.gather(1, slot)
        patch_row = (row_of_slot * length + position).masked_fill(row_of_slot < 0, -1)
        return patches, patch_row, present.gather(1, slot), slot, modality_embeddings

    def token_positions(self, head_offset: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Where the centre of each grid cell of each crop lies, in voxels from the head's centre: ``[B, L, 3]``.

        Args:
            head_offset: float ``[B, 3]``, the crop's centre minus the head's centre in voxels of the crop's grid
                (a batch's ``head_offset``); ``None``: every crop centred on the head.
            batch_size: ``B``.

        Raises:
            ValueError: ``head_offset`` is not ``[B, 3]``.
        """
        centres = self.cell_centres[None].expand(batch_size, -1, -1)
        if head_offset is None:
            return centres
        if tuple(head_offset.shape) != (batch_size, 3):
            raise ValueError(f"head_offset must be [{batch_size}, 3], got {tuple(head_offset.shape)}")
        return centres + head_offset.to(centres)[:, None, :]

    def position_embedding(self, head_offset: torch.Tensor | None, batch_size: int, decoder: bool = False
                           ) -> torch.Tensor:
        """Positional embedding of every grid cell of each crop, ``[B, L, D]`` (``[B, L, Dd]`` for the decoder).

        ``positions: head``: the sin-cos of :meth:`token_positions`; ``crop``: the learnable table, whatever the
        offset.
        """
        if self.config["positions"] == "crop":
            table = self.decoder_pos_embed if decoder else self.pos_embed
            return table.expand(batch_size, -1, -1)
        width = self.config["decoder_embed_dim" if decoder else "embed_dim"]
        return sincos_positions(self.token_positions(head_offset, batch_size), width)

    def _tokens(
        self, patches: torch.Tensor, patch_row: torch.Tensor, slot: torch.Tensor, modality_embeddings: torch.Tensor,
        index: torch.Tensor, index_valid: torch.Tensor, head_offset: torch.Tensor | None,
    ) -> torch.Tensor:
        """Embed the tokens at ``index`` [B, K] (the visible ones): ``[B, K, D]``.

        Pad-free, only the positions marked in ``index_valid`` [B, K] are computed and the fillers of shorter rows
        are zero; padded, every position is (fillers hold the embedding of some other token, masked later).
        """
        position_embedding = self.position_embedding(head_offset, index.shape[0])  # [B, L, D]
        width = position_embedding.shape[-1]
        per_slot = self.modality_proj(modality_embeddings)  # [B, M, D]
        position = index % self.tokens_per_modality  # grid cell, shared by all modalities
        if self.config["pad_free"] and not bool(index_valid.all()):
            flat_index = index[index_valid]  # [T]
            sessions = torch.nonzero(index_valid)[:, 0]
            rows = patch_row[sessions, flat_index]
            embedded = (self.patch_embed.proj(patches[rows]) + position_embedding[sessions, position[index_valid]]
                        + per_slot[sessions, slot[sessions, flat_index]])
            out = embedded.new_zeros(*index.shape, width)
            out[index_valid] = embedded
            return out
        rows = patch_row.gather(1, index).clamp_min(0)  # fillers of short rows may point at padding: any row does
        return (self.patch_embed.proj(patches[rows])
                + position_embedding.gather(1, position[..., None].expand(-1, -1, width))
                + per_slot.gather(1, slot.gather(1, index)[..., None].expand(-1, -1, width)))

    def forward(
        self,
        images: torch.Tensor,
        modality_embeddings: torch.Tensor,
        present: torch.Tensor,
        generator: torch.Generator | None = None,
        head_offset: torch.Tensor | None = None,
    ) -> MAEOutput:
        """Mask, encode the visible tokens, decode every token and reconstruct the masked patches.

        Args:
            images: float ``[B, M, D, H, W]``; slots with ``present`` False hold anything.
            modality_embeddings: float ``[B, M, modality_dim]``.
            present: bool ``[B, M]``, False for padded slots; each session needs one present slot.
            generator: Optional generator for a reproducible mask.
            head_offset: float ``[B, 3]``: each crop's centre minus its head's centre, in voxels (a batch's
                ``head_offset``); ``None``: centred crops. Read only with ``positions: head``.

        Returns:
            :class:`MAEOutput`.
        """
        patches, patch_row, valid, slot, modality_embeddings = self._prepare(images, modality_embeddings, present)
        keep = padding_aware_mask(valid, self.mask_ratio, generator=generator)
        index, features_valid = visible_index(keep)  # [B, K]
        visible = self._tokens(patches, patch_row, slot, modality_embeddings, index, features_valid, head_offset)
        features = self.encoder(visible, features_valid, modality_embeddings, slot.gather(1, index))
        decoded = self.forward_decoder(features, index, keep, valid, slot, modality_embeddings, head_offset)
        is_masked = valid & ~keep
        if self.config["pad_free"]:  # reconstruct only what the loss reads
            pred_masked = self.decoder_pred(decoded[is_masked])
        else:  # dense: every patch of the padded batch, as MAE does
            pred_masked = self.decoder_pred(decoded)[is_masked]
        return MAEOutput(pred_masked=pred_masked, target_masked=patches[patch_row[is_masked]],
                         keep=keep, valid=valid, features=features, features_valid=features_valid, decoded=decoded,
                         patches=patches, patch_row=patch_row, head=self.decoder_pred)

    def forward_decoder(
        self,
        features: torch.Tensor,
        index: torch.Tensor,
        keep: torch.Tensor,
        valid: torch.Tensor,
        slot: torch.Tensor,
        modality_embeddings: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Put visible features back at their positions, fill the rest with mask tokens, decode: ``[B, N, Dd]``.

        ``decoder_pred`` maps the result to patch voxels; the forward pass applies it to the masked tokens only.
        """
        b, n = keep.shape
        x = self.decoder_embed(features)  # [B, K, Dd]
        dec_dim = x.shape[-1]
        scattered = torch.zeros(b, n, dec_dim, dtype=x.dtype, device=x.device)
        scattered = scattered.scatter(1, index[..., None].expand(-1, -1, dec_dim), x)
        x = torch.where(keep[..., None], scattered, self.mask_token.to(x.dtype).expand(b, n, -1))
        m = modality_embeddings.shape[1]
        x = x + self.position_embedding(head_offset, b, decoder=True).repeat(1, m, 1)
        x = x + self.decoder_modality_proj(modality_embeddings).gather(1, slot[..., None].expand(-1, -1, dec_dim))
        return self.decoder(x, valid, modality_embeddings, slot)

    def encode(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode every valid token without masking, for transfer (``head_offset`` as in :meth:`forward`).

        Returns:
            ``tokens`` ``[B, M * L, D]`` and ``valid`` bool ``[B, M * L]`` (False for padded slots).
        """
        patches, patch_row, valid, slot, modality_embeddings = self._prepare(images, modality_embeddings, present)
        every = torch.arange(valid.shape[1], device=valid.device)[None].expand(valid.shape[0], -1)
        tokens = self._tokens(patches, patch_row, slot, modality_embeddings, every, valid, head_offset)
        return self.encoder(tokens, valid, modality_embeddings, slot), valid

    def encode_pooled(
        self, images: torch.Tensor, modality_embeddings: torch.Tensor, present: torch.Tensor,
        head_offset: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One embedding per session: the mean of :meth:`encode`'s valid tokens, ``[B, D]``."""
        tokens, valid = self.encode(images, modality_embeddings, present, head_offset)
        weights = valid.to(tokens.dtype)[..., None]
        return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
