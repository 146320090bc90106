"""Padding-aware random masking (Sec. "Padding-Aware Masking")."""

from __future__ import annotations

import torch


def keep_counts(valid: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """Visible tokens per session: ``max(1, round((1 - mask_ratio) * valid_count))``.

    Args:
        valid: bool ``[B, L]``, False for padded positions.
        mask_ratio: Fraction of each session's valid tokens to hide, in (0, 1).

    Returns:
        long ``[B]``.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
    valid_count = valid.sum(dim=1).to(torch.float64)
    # round() halves to even, like Python's round; float64 so that e.g. 0.25 * 10 stays 2.5 exactly
    return torch.round((1.0 - mask_ratio) * valid_count).clamp_min(1).to(torch.long)


def padding_aware_mask(
    valid: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose visible tokens uniformly at random among each session's valid positions.

    Every session keeps the same *fraction* of its own valid tokens, so a 4-modality session batched
    with a 1-modality one is not masked harder, and a padded position is never kept.

    Args:
        valid: bool ``[B, L]``, False for padded positions; every row needs at least one valid position.
        mask_ratio: Fraction of valid tokens to mask, in (0, 1).
        generator: Optional random generator (on ``valid``'s device) for reproducible masks.

    Returns:
        bool ``keep`` ``[B, L]`` with ``keep`` a subset of ``valid`` and
        ``keep.sum(1) == max(1, round((1 - mask_ratio) * valid.sum(1)))``.
    """
    if valid.dim() != 2 or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor [B, L], got {valid.dtype} of shape {tuple(valid.shape)}")
    if not bool(valid.any(dim=1).all()):
        raise ValueError("every session needs at least one valid token; got a row of valid that is all False")
    n_keep = keep_counts(valid, mask_ratio)
    noise = torch.rand(valid.shape, generator=generator, device=valid.device)
    noise = noise.masked_fill(~valid, 2.0)  # padded positions sort after every valid one
    rank = noise.argsort(dim=1).argsort(dim=1)  # ascend: small is keep, large is remove
    return rank < n_keep[:, None]


def visible_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices that gather the kept tokens to the front, in their original order.

    Args:
        keep: bool ``[B, L]``.

    Returns:
        ``index`` long ``[B, K]`` with ``K = max kept count``, and ``is_visible`` bool ``[B, K]``, False where
        a row has fewer kept tokens than ``K`` (those slots point at distinct non-kept positions).
    """
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    counts = keep.sum(dim=1)
    k_max = int(counts.max())
    is_visible = torch.arange(k_max, device=keep.device)[None, :] < counts[:, None]
    return order[:, :k_max], is_visible
