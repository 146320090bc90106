"""Conditional LayerNorm, Eq. (1): modality-dependent scale and shift of a normalised token."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConditionalLayerNorm(nn.Module):
    """``CLN(h | e) = gamma(e) * (h - mu) / sigma + beta(e)`` (Eq. (1)).

    ``gamma`` and ``beta`` are linear in the condition ``e`` (the modality embedding) and are
    initialised so that the layer starts as a LayerNorm without affine parameters
    (``gamma = 1``, ``beta = 0`` for every condition).

    Args:
        dim: Width of the normalised features.
        cond_dim: Width of the condition vector.
        eps: Added to the variance, as in ``torch.nn.LayerNorm``.
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0 or cond_dim <= 0:
            raise ValueError(f"ConditionalLayerNorm needs positive sizes, got dim={dim}, cond_dim={cond_dim}")
        self.dim = dim
        self.eps = eps
        self.to_scale_shift = nn.Linear(cond_dim, 2 * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start as the identity normalisation: gamma = 1, beta = 0 for every modality embedding."""
        nn.init.zeros_(self.to_scale_shift.weight)
        with torch.no_grad():
            self.to_scale_shift.bias.zero_()
            self.to_scale_shift.bias[: self.dim].fill_(1.0)  # gamma = 1, beta = 0 at init

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``x`` and modulate it by its condition.

        Args:
            x: Features ``[..., dim]``.
            cond: Conditions ``[..., cond_dim]`` broadcastable to ``x`` per token or, with
                ``cond_index``, one row per modality slot ``[B, M, cond_dim]``.
            cond_index: Optional long ``[B, N]``: the modality slot of each token of ``x`` (``[B, N, dim]``), or
                ``[T]``: the flat row of ``cond.reshape(B * M, -1)`` of each packed token of ``x`` (``[T, dim]``).
                Computing ``gamma``/``beta`` once per slot and gathering them is much cheaper than per token.

        Returns:
            Tensor shaped like ``x``.
        """
        scale_shift = self.to_scale_shift(cond)  # gathered once per token for gamma and beta together
        if cond_index is not None and cond_index.dim() == 1:  # packed tokens [T]: flat rows of [B * M]
            scale_shift = scale_shift.reshape(-1, 2 * self.dim)[cond_index]
        elif cond_index is not None:
            scale_shift = scale_shift.gather(1, cond_index.unsqueeze(-1).expand(-1, -1, 2 * self.dim))  # [B, N, 2d]
        gamma, beta = scale_shift.chunk(2, dim=-1)
        return torch.addcmul(beta, F.layer_norm(x, (self.dim,), eps=self.eps), gamma)
