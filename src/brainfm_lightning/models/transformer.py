"""Transformer blocks whose every norm is a Conditional LayerNorm, with pad-free or padded-masked attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from typing_extensions import override

from brainfm_lightning.models.cln import ConditionalLayerNorm
from brainfm_lightning.models.packing import Packing


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _attend(self, qkv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv: [b, n, 3C] -> [b, n, C]; mask: bool [b, n] of keys to attend to, or None for all."""
        b, n, c3 = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, c3 // (3 * self.num_heads)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return out.transpose(1, 2).reshape(b, n, c3 // 3)  # [b, n, C]

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor | None = None,
                groups: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Padded ``x`` [B, N, C] with bool ``key_valid`` [B, N], or packed ``x`` [T, C] with ``groups``."""
        qkv = self.qkv(x)
        if groups is None:
            return self.proj(self._attend(qkv, key_valid))
        return self.proj(self._attend_groups(qkv, groups))

    @torch.compiler.disable  # the group sizes change every batch: compiled code would be specialised to each
    def _attend_groups(self, qkv: torch.Tensor, groups: list[tuple[int, int]]) -> torch.Tensor:
        """Packed qkv [T, 3C] -> [T, C], attention within each session of each equal-length group."""
        outputs, start = [], 0
        for sessions, length in groups:  # every token of a group is valid: no mask, no padding
            chunk = qkv[start : start + sessions * length].reshape(sessions, length, -1)
            outputs.append(self._attend(chunk, None).reshape(sessions * length, -1))
            start += sessions * length
        return torch.cat(outputs)


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConditionedBlock(nn.Module):
    """Pre-norm ViT block with Conditional LayerNorm in place of both LayerNorms.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        cond_dim: Width of the modality embedding that conditions the norms.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = ConditionalLayerNorm(dim, cond_dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = ConditionalLayerNorm(dim, cond_dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor,
                key_valid: torch.Tensor | None = None, groups: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """Padded: x [B, N, C], cond_index [B, N], key_valid [B, N]. Packed: x [T, C], cond_index [T], groups."""
        x = x + self.attn(self.norm1(x, cond, cond_index), key_valid, groups)
        return x + self.mlp(self.norm2(x, cond, cond_index))


class ConditionedTransformer(nn.Module):
    """A stack of :class:`ConditionedBlock` followed by a final Conditional LayerNorm.

    Args:
        dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        cond_dim: Width of the modality embedding.
        mlp_ratio: MLP hidden width over ``dim``.
        pad_free: Run on the packed valid tokens (attention per group of equal length, no mask) instead of the
            padded batch with a key-padding mask. Same numbers, less compute when sessions differ in length.
        conditioned: ``False`` feeds every norm a zero condition, so each is a LayerNorm with a learned affine
            shared by all modalities (the no-CLN ablation; the maps' weights then receive zero gradients).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0,
                 pad_free: bool = True, conditioned: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConditionedBlock(dim, num_heads, cond_dim, mlp_ratio) for _ in range(depth))
        self.norm = ConditionalLayerNorm(dim, cond_dim)
        self.pad_free = pad_free
        self.conditioned = conditioned
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        key_valid: torch.Tensor,
        cond: torch.Tensor,
        cond_index: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, N, C]; key_valid: bool [B, N]; cond: [B, M, cond_dim]; cond_index: long [B, N] slot of each token.

        Returns:
            ``[B, N, C]``; padded positions hold zeros (pad-free) or values nothing depends on (padded).
        """
        if not self.conditioned:
            cond = torch.zeros_like(cond)
        if not self.pad_free:
            return self._run(x, cond, cond_index, key_valid=key_valid)
        if bool(key_valid.all()):  # one group holding every session: no packing needed, and no mask
            return self._run(x, cond, cond_index)
        packing = Packing.from_valid(key_valid)
        slots = cond_index + torch.arange(x.shape[0], device=x.device)[:, None] * cond.shape[1]  # flat [B * M] rows
        packed = self._run(packing.pack(x), cond, packing.pack(slots), groups=packing.groups)
        return packing.unpack(packed)

    def compile_blocks(self, **options: object) -> None:
        """``torch.compile`` every block in place (state-dict keys unchanged), with dynamic token counts.

        Packed attention stays eager (its group sizes vary per batch); norms, projections, MLP and residuals fuse.

        Args:
            options: Passed to ``nn.Module.compile`` (e.g. ``mode``, ``backend``).
        """
        for block in self.blocks:
            block.compile(**({"dynamic": True} | options))

    def _run(self, x: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor,
             key_valid: torch.Tensor | None = None, groups: list[tuple[int, int]] | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, cond, cond_index, key_valid, groups, use_reentrant=False)
            else:
                x = block(x, cond, cond_index, key_valid, groups)
        return self.norm(x, cond, cond_index)
