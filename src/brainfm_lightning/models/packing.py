"""Packing of the valid tokens of a padded batch, for pad-free compute.

Sessions carry 1..M modalities, so a batch has at most M distinct valid lengths. Linear layers and norms run on
the packed valid tokens ``[T, C]``; attention runs once per group of sessions that share a length, with no mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packing:
    """Where each packed token comes from, and how the packed tokens split into equal-length groups.

    Attributes:
        index: long ``[T]``, flat positions in ``[B * N]`` of the valid tokens, group by group, session by session.
        groups: ``(sessions, length)`` per group, in packed order; ``sum(s * l) == T``.
        batch_shape: ``(B, N)`` of the padded layout.
    """

    index: torch.Tensor
    groups: list[tuple[int, int]]
    batch_shape: tuple[int, int]

    @classmethod
    def from_valid(cls, valid: torch.Tensor) -> Packing:
        """Build the packing of bool ``valid`` ``[B, N]`` (any positions may be valid, not only a prefix)."""
        b, n = valid.shape
        lengths = valid.sum(dim=1)
        order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid positions first, in order
        flat = order + torch.arange(b, device=valid.device)[:, None] * n  # [B, N] flat positions
        pieces, groups = [], []
        for length in sorted(set(lengths.tolist())):
            rows = torch.nonzero(lengths == length).flatten()
            pieces.append(flat[rows, :length].reshape(-1))
            groups.append((int(rows.numel()), int(length)))
        return cls(index=torch.cat(pieces), groups=groups, batch_shape=(b, n))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, ...]`` -> ``[T, ...]``."""
        return x.reshape(self.batch_shape[0] * self.batch_shape[1], *x.shape[2:])[self.index]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[T, C]`` -> ``[B, N, C]`` with zeros at padded positions."""
        b, n = self.batch_shape
        out = packed.new_zeros(b * n, packed.shape[-1])
        return out.index_copy(0, self.index, packed).reshape(b, n, -1)
