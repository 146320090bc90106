"""Transformer blocks whose every norm is a Conditional LayerNorm, with padding-masked SDPA attention."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from brainfm_lightning.models.cln import ConditionalLayerNorm


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with a key-padding mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """x: [B, N, C]; key_valid: bool [B, N], False keys are never attended to."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_valid[:, None, None, :])  # [B, H, N, hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

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

    def forward(
        self, x: torch.Tensor, key_valid: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor
    ) -> torch.Tensor:
        """x: [B, N, C]; cond: [B, M, cond_dim] per modality slot; cond_index: long [B, N] slot of each token."""
        x = x + self.attn(self.norm1(x, cond, cond_index), key_valid)
        return x + self.mlp(self.norm2(x, cond, cond_index))


class ConditionedTransformer(nn.Module):
    """A stack of :class:`ConditionedBlock` followed by a final Conditional LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConditionedBlock(dim, num_heads, cond_dim, mlp_ratio) for _ in range(depth))
        self.norm = ConditionalLayerNorm(dim, cond_dim)
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, key_valid: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor
    ) -> torch.Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, key_valid, cond, cond_index, use_reentrant=False)
            else:
                x = block(x, key_valid, cond, cond_index)
        return self.norm(x, cond, cond_index)
