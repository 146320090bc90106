"""Pretraining objective, Eq. (2)-(4): masked reconstruction plus VICReg variance/covariance terms."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def at_least_float32(z: torch.Tensor) -> torch.Tensor:
    """Upcast for the loss arithmetic: bf16/fp16 become float32; float32 and float64 are kept (never downcast).

    Args:
        z: Any floating tensor.

    Returns:
        ``z`` itself, or its float32 copy.
    """
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def masked_mse_loss(
    pred: torch.Tensor, target: torch.Tensor, is_masked: torch.Tensor | None = None, norm_pix_loss: bool = False
) -> torch.Tensor:
    """``L_MAE``: mean squared error over the voxels of masked, valid patches only.

    Args:
        pred: ``[B, N, P]`` reconstructed patches (not clamped), or ``[Q, P]`` of the masked patches only.
        target: Original patches shaped like ``pred``.
        is_masked: bool ``[B, N]``: masked and not padding; ``None`` when ``pred`` and ``target`` hold only the
            masked patches already (``MAEOutput.pred_masked``/``target_masked``).
        norm_pix_loss: Normalise each target patch by its own mean and variance (MAE's ``norm_pix_loss``).

    Returns:
        Scalar; 0 when nothing is masked.
    """
    # only the masked patches enter the arithmetic: [B, N, P] -> [K, P], no work on visible or padded ones
    if is_masked is not None:
        pred, target = pred[is_masked], target[is_masked]
    pred, target = at_least_float32(pred), at_least_float32(target)
    if pred.shape[0] == 0:
        return pred.sum() * 0.0  # keeps the graph connected
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return F.mse_loss(pred, target)  # every patch has P voxels: the mean over patches and voxels


def variance_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Eq. (2): ``mean_j ReLU(1 - sqrt(Var(z_j) + eps))``.

    ``eps`` sits inside the square root, as in the VICReg reference (the paper prints it outside).

    Args:
        z: Encoder features ``[N, D]`` of all valid visible tokens of the batch.
        eps: Numerical floor of the variance.

    Returns:
        Scalar in float32, or float64 for float64 ``z``; 0 for ``N < 2`` where a variance is undefined.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be [N, D], got shape {tuple(z.shape)}")
    if z.shape[0] < 2:
        return z.new_zeros(())
    std = torch.sqrt(at_least_float32(z).var(dim=0) + eps)  # unbiased, N - 1
    return torch.relu(1.0 - std).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """Eq. (3): ``(1/D) * sum_{i != j} Cov(z_i, z_j)^2`` with the ``N - 1`` divisor.

    Args:
        z: Encoder features ``[N, D]``.

    Returns:
        Scalar in float32, or float64 for float64 ``z``; 0 for ``N < 2``.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be [N, D], got shape {tuple(z.shape)}")
    n, d = z.shape
    if n < 2:
        return z.new_zeros(())
    z = at_least_float32(z)
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)  # [D, D]
    off_diagonal = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return off_diagonal / d


def pretraining_loss(
    loss_mae: torch.Tensor, loss_var: torch.Tensor, loss_cov: torch.Tensor, lambda_var: float, lambda_cov: float
) -> torch.Tensor:
    """Eq. (4): ``L_MAE + lambda_var * L_var + lambda_cov * L_cov``."""
    return loss_mae + lambda_var * loss_var + lambda_cov * loss_cov
