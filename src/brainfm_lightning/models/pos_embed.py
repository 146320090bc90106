"""3D sine-cosine values that initialise the learnable positional embeddings, and their resampling to a new grid."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


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


def interpolate_pos_embed(
    pos_embed: torch.Tensor, old_grid: tuple[int, int, int], new_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Resample a learned positional embedding to another patch grid (a crop of another size), as MAE/timm do in 2D.

    Args:
        pos_embed: ``[1, gd * gh * gw, D]`` in row-major (d, h, w) order, on ``old_grid``.
        old_grid: ``(gd, gh, gw)`` it was trained on.
        new_grid: The grid to resample to.

    Returns:
        ``[1, prod(new_grid), D]``: trilinear interpolation on the 3D grid (``align_corners=False``); unchanged when
        the grids are equal.

    Raises:
        ValueError: ``pos_embed`` does not hold ``prod(old_grid)`` tokens.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[:2] != (1, math.prod(old_grid)):
        raise ValueError(f"pos_embed of shape {tuple(pos_embed.shape)} is not [1, {math.prod(old_grid)}, D] "
                         f"for the grid {tuple(old_grid)}")
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    width = pos_embed.shape[-1]
    volume = pos_embed.reshape(1, *old_grid, width).permute(0, 4, 1, 2, 3)  # [1, D, gd, gh, gw]
    resized = F.interpolate(volume.float(), size=tuple(new_grid), mode="trilinear", align_corners=False)
    return resized.permute(0, 2, 3, 4, 1).reshape(1, math.prod(new_grid), width).to(pos_embed.dtype)
