"""Learning-rate schedule: linear warm-up then cosine decay, per optimizer step."""

from __future__ import annotations

import math

import torch


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR that rises linearly for ``warmup_steps`` and then follows a half cosine to ``min_lr_ratio``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norm parameters, positional embeddings and mask tokens (as in MAE)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_exempt = param.ndim <= 1 or name.endswith(("pos_embed", "mask_token")) or "to_scale_shift" in name
        (no_decay if is_exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
