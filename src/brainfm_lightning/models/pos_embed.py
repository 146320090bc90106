"""3D sine-cosine values that initialise the learnable positional embeddings, and their resampling to a new grid."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def sincos_3d(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """Fixed 3D sin-cos embedding of the integer grid positions, ``[gd * gh * gw, dim]`` in row-major (d, h, w) order.

    Each axis gets ``2 * (dim // 6)`` channels; the remaining channels stay zero (:func:`sincos_positions`).
    """
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    return sincos_positions(torch.stack([axis.reshape(-1) for axis in coords], dim=-1), dim)


def sincos_positions(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Sin-cos embedding of continuous 3D positions ``[..., 3]`` (any real coordinates), ``[..., dim]`` float32.

    Along each axis ``a`` the channels ``[2aK, 2aK + K)`` hold ``sin(x_a * omega_k)`` and the next ``K`` hold
    ``cos(x_a * omega_k)``, with ``K = dim // 6`` and ``omega_k = 10000 ** (-k / K)`` (MAE's 2D recipe in 3D); the
    last ``dim - 6K`` channels stay zero. Computed in float64, so a coordinate of a few hundred keeps its
    fraction.
    """
    if coords.shape[-1] != 3:
        raise ValueError(f"coords must end in 3 coordinates, got shape {tuple(coords.shape)}")
    per_axis = dim // 6
    omega = 1.0 / 10000 ** (torch.arange(per_axis, dtype=torch.float64, device=coords.device) / max(per_axis, 1))
    angles = coords.to(torch.float64)[..., None] * omega  # [..., 3, K]
    parts = torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # [..., 3 * 2 * K]: sin, cos per axis
    embed = torch.zeros(*coords.shape[:-1], dim, dtype=torch.float64, device=coords.device)
    embed[..., : 6 * per_axis] = parts
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
