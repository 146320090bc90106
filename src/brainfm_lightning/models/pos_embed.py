"""3D sine-cosine values used to initialise the learnable positional embeddings."""

from __future__ import annotations

import math

import torch


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos embedding, ``[gd * gh * gw, dim]`` in row-major (d, h, w) order.

    Each axis gets ``2 * (dim // 6)`` channels; the remaining channels stay zero.
    """
    per_axis = dim // 6
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(per_axis, dtype=torch.float64) / max(per_axis, 1))
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * omega[None, :]  # [L, per_axis]
        parts += [torch.sin(angles), torch.cos(angles)]
    embed = torch.zeros(math.prod(grid), dim, dtype=torch.float64)
    if per_axis:
        embed[:, : 6 * per_axis] = torch.cat(parts, dim=1)
    return embed.float()
