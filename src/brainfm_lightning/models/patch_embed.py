"""3D patchify and patch embedding."""

from __future__ import annotations

import torch
from torch import nn

from brainfm_lightning.sizes import to_3tuple

__all__ = ["PatchEmbed3d", "patch_view", "patchify", "to_3tuple", "unpatchify"]


def patch_view(images: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """View ``[B, M, D, H, W]`` as ``[B, M, gd, gh, gw, pd, ph, pw]`` patches, without copying.

    Indexing the view copies only the selected entries in one pass, e.g. ``patch_view(x, p)[present]``.
    """
    b, m, d, h, w = images.shape
    pd, ph, pw = patch_size
    return images.reshape(b, m, d // pd, pd, h // ph, ph, w // pw, pw).permute(0, 1, 2, 4, 6, 3, 5, 7)


def patchify(images: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Cut volumes into non-overlapping patches.

    Args:
        images: ``[B, M, D, H, W]``.
        patch_size: ``(pd, ph, pw)``, each dividing the matching image size.

    Returns:
        ``[B, M * L, pd * ph * pw]`` with ``L = (D/pd)(H/ph)(W/pw)``; tokens of modality slot ``m``
        occupy ``[m * L, (m + 1) * L)`` in row-major (d, h, w) grid order.
    """
    patches = patch_view(images, patch_size)  # [B, M, gd, gh, gw, pd, ph, pw]
    return patches.reshape(images.shape[0], -1, patch_size[0] * patch_size[1] * patch_size[2])


def unpatchify(
    patches: torch.Tensor, num_slots: int, grid: tuple[int, int, int], patch_size: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, M * L, P]`` -> ``[B, M, D, H, W]``."""
    gd, gh, gw = grid
    pd, ph, pw = patch_size
    x = patches.reshape(patches.shape[0], num_slots, gd, gh, gw, pd, ph, pw)
    x = x.permute(0, 1, 2, 5, 3, 6, 4, 7)
    return x.reshape(patches.shape[0], num_slots, gd * pd, gh * ph, gw * pw)


class PatchEmbed3d(nn.Module):
    """Linear projection of flattened 3D patches (equivalent to a stride-``p`` Conv3d).

    Args:
        patch_size: Patch edge lengths.
        embed_dim: Token width.
    """

    def __init__(self, patch_size: tuple[int, int, int], embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(patch_size[0] * patch_size[1] * patch_size[2], embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, M, D, H, W]`` -> tokens ``[B, M * L, embed_dim]``."""
        return self.proj(patchify(images, self.patch_size))
